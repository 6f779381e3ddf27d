//! Pushes the server starts: join/leave, server-side subscriptions, pings.

use std::collections::HashMap;

use serde_json::json;

use crate::common::client::{cmd, data_json, subs_of};
use crate::common::{tokens, Client, Server, Wire};
use herald::protocol::messages::{Push, SubscribeRequest};

fn join_of(p: &Push, client: &str) -> bool {
    p.join
        .as_ref()
        .and_then(|j| j.info.as_ref())
        .is_some_and(|i| i.client == client)
}

fn leave_of(p: &Push, client: &str) -> bool {
    p.leave
        .as_ref()
        .and_then(|l| l.info.as_ref())
        .is_some_and(|i| i.client == client)
}

pub async fn join_and_leave_pushes(wire: Wire) {
    let srv = Server::start();
    let (mut a, _) = Client::connect(srv.addr, wire, &tokens::connect("alice")).await;
    let (mut b, bres) = Client::connect(srv.addr, wire, &tokens::connect("bob")).await;
    a.ok(cmd::subscribe_with(SubscribeRequest {
        channel: "chat:jl".into(),
        join_leave: true,
        ..Default::default()
    }))
    .await;

    b.ok(cmd::subscribe("chat:jl")).await;
    let join = a
        .push_where("bob's join", |p| join_of(p, &bres.client))
        .await;
    assert_eq!(join.channel, "chat:jl");
    assert_eq!(join.join.unwrap().info.unwrap().user, "bob");

    b.ok(cmd::unsubscribe("chat:jl")).await;
    let leave = a
        .push_where("bob's leave", |p| leave_of(p, &bres.client))
        .await;
    assert_eq!(leave.channel, "chat:jl");
    assert_eq!(leave.leave.unwrap().info.unwrap().user, "bob");

    // Going away without unsubscribing also leaves.
    let (mut c, cres) = Client::connect(srv.addr, wire, &tokens::connect("carol")).await;
    c.ok(cmd::subscribe("chat:jl")).await;
    a.push_where("carol's join", |p| join_of(p, &cres.client))
        .await;
    drop(c);
    a.push_where("carol's leave", |p| leave_of(p, &cres.client))
        .await;
}

/// A leave describes the client exactly as its join did (user, client, conn_info).
pub async fn leave_carries_the_same_client_info_as_join(wire: Wire) {
    let srv = Server::start();
    let (mut a, _) = Client::connect(srv.addr, wire, &tokens::connect("alice")).await;
    let token = tokens::connect_with_info("bob", json!({"name": "Bob"}));
    let (mut b, bres) = Client::connect(srv.addr, wire, &token).await;
    a.ok(cmd::subscribe_with(SubscribeRequest {
        channel: "chat:info".into(),
        join_leave: true,
        ..Default::default()
    }))
    .await;
    b.ok(cmd::subscribe("chat:info")).await;
    let join = a
        .push_where("bob's join", |p| join_of(p, &bres.client))
        .await
        .join
        .unwrap()
        .info
        .unwrap();
    assert_eq!(data_json_bytes(&join.conn_info), json!({"name": "Bob"}));
    b.ok(cmd::unsubscribe("chat:info")).await;
    let leave = a
        .push_where("bob's leave", |p| leave_of(p, &bres.client))
        .await
        .leave
        .unwrap()
        .info
        .unwrap();
    assert_eq!(leave, join, "leave info differs from join info");
}

fn data_json_bytes(b: &[u8]) -> serde_json::Value {
    serde_json::from_slice(b).unwrap_or_else(|e| panic!("not json ({e}): {b:?}"))
}

pub async fn server_side_subscriptions_from_token(wire: Wire) {
    let srv = Server::start();
    let api = srv.api();
    let token = tokens::connect_with_channels("alice", &["chat:srv", "news"]);
    let (mut c, res) = Client::connect(srv.addr, wire, &token).await;
    let mut names: Vec<_> = subs_of(&res).into_keys().collect();
    names.sort();
    assert_eq!(names, vec!["chat:srv", "news"], "{res:?}");

    api.publish("chat:srv", json!({"n": 1})).await;
    let p = c.next_pub("chat:srv").await;
    assert_eq!(data_json(&p), json!({"n": 1}));
    api.publish("news", json!({"n": 2})).await;
    assert_eq!(data_json(&c.next_pub("news").await), json!({"n": 2}));
    // Already subscribed by the server.
    assert_eq!(c.err(cmd::subscribe("news")).await.code, 105);
}

pub async fn server_side_subscription_recovers_on_reconnect(wire: Wire) {
    let srv = Server::start();
    let api = srv.api();
    let token = tokens::connect_with_channels("alice", &["feed:a"]);
    let (mut c, res) = Client::connect(srv.addr, wire, &token).await;
    let sub = &subs_of(&res)["feed:a"];
    assert!(sub.recoverable, "feed forces recovery: {sub:?}");
    assert!(!sub.epoch.is_empty(), "{sub:?}");
    let epoch = sub.epoch.clone();
    api.publish("feed:a", json!({"n": 1})).await;
    assert_eq!(c.next_pub("feed:a").await.offset, 1);
    drop(c);

    api.publish("feed:a", json!({"n": 2})).await;
    api.publish("feed:a", json!({"n": 3})).await;
    let mut connect = cmd::connect(&token);
    connect.connect.as_mut().unwrap().subs = HashMap::from([(
        "feed:a".to_string(),
        SubscribeRequest {
            recover: true,
            offset: 1,
            epoch: epoch.clone(),
            ..Default::default()
        },
    )]);
    let mut c = Client::open(srv.addr, wire).await;
    let res = c.connect_with(connect).await;
    let sub = &subs_of(&res)["feed:a"];
    assert!(sub.recovered, "{sub:?}");
    assert_eq!(sub.epoch, epoch);
    assert_eq!(sub.offset, 3);
    let got: Vec<_> = sub
        .publications
        .iter()
        .map(|p| (p.offset, data_json(p)))
        .collect();
    assert_eq!(got, vec![(2, json!({"n": 2})), (3, json!({"n": 3}))]);
}

/// A server that pings every second and waits half a second for the pong.
fn fast_ping_server() -> Server {
    Server::start_with(&[
        ("HERALD_CLIENT__PING_INTERVAL", "1s"),
        ("HERALD_CLIENT__PONG_TIMEOUT", "500ms"),
    ])
}

pub async fn server_pings_answered_keep_connection(wire: Wire) {
    let srv = fast_ping_server();
    let (mut c, res) = Client::connect(srv.addr, wire, &tokens::connect("alice")).await;
    assert_eq!(res.ping, 1, "{res:?}");
    assert!(res.pong, "{res:?}");
    c.ok(cmd::subscribe("chat:ping")).await;
    c.wait_pings(3).await;
    c.roundtrip().await;
    srv.api().publish("chat:ping", json!({"alive": true})).await;
    assert_eq!(
        data_json(&c.next_pub("chat:ping").await),
        json!({"alive": true})
    );
}

pub async fn no_pong_closes_3012(wire: Wire) {
    let srv = fast_ping_server();
    let (mut c, _) = Client::connect(srv.addr, wire, &tokens::connect("alice")).await;
    c.auto_pong = false;
    let close = c.expect_close().await;
    assert!(c.pings >= 1, "the server pinged first");
    assert_eq!(close.code, 3012, "{close:?}");
    assert_eq!(close.reason, "no pong");
}

pub async fn personal_channel_subscription(wire: Wire) {
    let srv = Server::start_with(&[("HERALD_AUTH__PERSONAL_CHANNEL", "true")]);
    let (mut c, res) = Client::connect(srv.addr, wire, &tokens::connect("alice")).await;
    assert!(subs_of(&res).contains_key("personal:#alice"), "{res:?}");
    srv.api()
        .publish("personal:#alice", json!({"for": "alice"}))
        .await;
    assert_eq!(
        data_json(&c.next_pub("personal:#alice").await),
        json!({"for": "alice"})
    );
}

/// Publications cross formats: each subscriber gets them in its own encoding.
pub async fn publications_reach_subscribers_of_the_other_format(wire: Wire) {
    let other = match wire {
        Wire::Json => Wire::Protobuf,
        Wire::Protobuf => Wire::Json,
    };
    let srv = Server::start();
    let (mut publ, _) = Client::connect(srv.addr, wire, &tokens::connect("alice")).await;
    let (mut sub, _) = Client::connect(srv.addr, other, &tokens::connect("bob")).await;
    let (mut same, _) = Client::connect(srv.addr, wire, &tokens::connect("carol")).await;
    sub.ok(cmd::subscribe("open:mix")).await;
    same.ok(cmd::subscribe("open:mix")).await;
    publ.ok(cmd::publish(
        "open:mix",
        &json!({"text": "hi", "n": [1, 2]}),
    ))
    .await;
    for c in [&mut sub, &mut same] {
        let p = c.next_pub("open:mix").await;
        assert_eq!(data_json(&p), json!({"text": "hi", "n": [1, 2]}));
        assert_eq!(p.offset, 1);
        assert_eq!(p.info.as_ref().map(|i| i.user.as_str()), Some("alice"));
    }
}
