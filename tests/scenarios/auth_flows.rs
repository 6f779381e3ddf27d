//! refresh and sub_refresh: extending connection and subscription lifetimes.

use std::time::Duration;

use serde_json::json;

use crate::common::client::cmd;
use crate::common::{tokens, Client, Server, Wire};

pub async fn refresh_extends_connection(wire: Wire) {
    let srv = Server::start();
    let (mut c, res) = Client::connect(srv.addr, wire, &tokens::connect_ttl("alice", 60)).await;
    assert!(res.expires && res.ttl > 0 && res.ttl <= 60, "{res:?}");

    let r = c
        .ok(cmd::refresh(&tokens::connect_ttl("alice", 3600)))
        .await;
    let refreshed = r.refresh.expect("refresh result");
    assert_eq!(refreshed.client, res.client);
    assert!(refreshed.expires, "{refreshed:?}");
    assert!(
        refreshed.ttl > 60 && refreshed.ttl <= 3600,
        "ttl extended: {refreshed:?}"
    );
    c.ok(cmd::subscribe("chat:after-refresh")).await;
}

pub async fn refresh_for_another_user_closes_3500(wire: Wire) {
    let srv = Server::start();
    let (mut c, _) = Client::connect(srv.addr, wire, &tokens::connect_ttl("alice", 60)).await;
    let mut command = cmd::refresh(&tokens::connect("mallory"));
    command.id = c.next_id();
    c.send(&command).await;
    let close = c.expect_close().await;
    assert_eq!(close.code, 3500, "{close:?}");
}

pub async fn subscription_token_and_sub_refresh(wire: Wire) {
    let srv = Server::start();
    let (mut c, _) = Client::connect(srv.addr, wire, &tokens::connect("alice")).await;
    // Without a token the namespace refuses.
    assert_eq!(c.err(cmd::subscribe("secret:room")).await.code, 103);
    // A token for someone else.
    let bob_token = tokens::subscribe("bob", "secret:room", 60);
    assert_eq!(
        c.err(cmd::subscribe_token("secret:room", &bob_token))
            .await
            .code,
        103
    );

    let token = tokens::subscribe("alice", "secret:room", 60);
    let r = c.ok(cmd::subscribe_token("secret:room", &token)).await;
    let sub = r.subscribe.expect("subscribe result");
    assert!(sub.expires && sub.ttl > 0 && sub.ttl <= 60, "{sub:?}");

    let fresh = tokens::subscribe("alice", "secret:room", 3600);
    let r = c.ok(cmd::sub_refresh("secret:room", &fresh)).await;
    let refreshed = r.sub_refresh.expect("sub_refresh result");
    assert!(refreshed.expires, "{refreshed:?}");
    assert!(
        refreshed.ttl > 60 && refreshed.ttl <= 3600,
        "ttl extended: {refreshed:?}"
    );

    // A token for another channel does not refresh this one.
    let other = tokens::subscribe("alice", "secret:other", 3600);
    assert_eq!(
        c.err(cmd::sub_refresh("secret:room", &other)).await.code,
        103
    );

    // Still subscribed: publications arrive.
    srv.api()
        .publish("secret:room", serde_json::json!({"s": 1}))
        .await;
    assert_eq!(c.next_pub("secret:room").await.offset, 1);
}

/// A server that closes expired connections one second after their expiry.
fn quick_expiry_server() -> Server {
    Server::start_with(&[("HERALD_AUTH__EXPIRED_CLOSE_DELAY", "1s")])
}

pub async fn refresh_with_expired_token_closes_3005(wire: Wire) {
    let srv = Server::start();
    let (mut c, _) = Client::connect(srv.addr, wire, &tokens::connect_ttl("alice", 60)).await;
    let mut command = cmd::refresh(&tokens::expired("alice"));
    command.id = c.next_id();
    c.send(&command).await;
    assert_eq!(c.expect_close().await.code, 3005);
}

pub async fn connection_expires_without_refresh_3005(wire: Wire) {
    let srv = quick_expiry_server();
    let (mut c, res) = Client::connect(srv.addr, wire, &tokens::connect_ttl("alice", 2)).await;
    assert!(res.expires && res.ttl <= 2, "{res:?}");
    // Due about 3 s after connect: a 2 s token plus the 1 s close delay.
    let close = c
        .close_within(Duration::from_secs(8))
        .await
        .expect("a connection whose token expired and was not refreshed is closed");
    assert_eq!(close.code, 3005, "{close:?}");
}

pub async fn subscription_expires_without_sub_refresh_3006(wire: Wire) {
    let srv = quick_expiry_server();
    let (mut c, _) = Client::connect(srv.addr, wire, &tokens::connect("alice")).await;
    let token = tokens::subscribe("alice", "secret:short", 2);
    c.ok(cmd::subscribe_token("secret:short", &token)).await;
    // Due about 3 s after subscribing: a 2 s token plus the 1 s close delay.
    let close = c
        .close_within(Duration::from_secs(8))
        .await
        .expect("a subscription whose token expired and was not refreshed ends the connection");
    assert_eq!(close.code, 3006, "{close:?}");
}

pub async fn expired_subscription_tokens_are_109(wire: Wire) {
    let srv = Server::start();
    let (mut c, _) = Client::connect(srv.addr, wire, &tokens::connect("alice")).await;
    let expired = tokens::subscribe("alice", "secret:room", -120);
    assert_eq!(
        c.err(cmd::subscribe_token("secret:room", &expired))
            .await
            .code,
        109
    );
    let token = tokens::subscribe("alice", "secret:room", 60);
    c.ok(cmd::subscribe_token("secret:room", &token)).await;
    assert_eq!(
        c.err(cmd::sub_refresh("secret:room", &expired)).await.code,
        109
    );
    c.roundtrip().await;
}

/// A subscription token's `info` becomes the subscription's `chan_info`: in presence
/// and in the publisher info of the client's publications.
pub async fn subscription_token_info_is_chan_info(wire: Wire) {
    let srv = Server::start();
    let (mut c, res) = Client::connect(srv.addr, wire, &tokens::connect("alice")).await;
    let token = tokens::subscribe_with_info("alice", "secret:info", json!({"role": "admin"}));
    c.ok(cmd::subscribe_token("secret:info", &token)).await;
    let presence = c
        .ok(cmd::presence("secret:info"))
        .await
        .presence
        .unwrap()
        .presence;
    let me = &presence[&res.client];
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&me.chan_info).expect("chan_info json"),
        json!({"role": "admin"})
    );
    c.ok(cmd::publish("secret:info", &json!({"n": 1}))).await;
    let p = c.next_pub("secret:info").await;
    let info = p.info.expect("publisher info");
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&info.chan_info).expect("chan_info json"),
        json!({"role": "admin"})
    );
}

/// With `auth.allow_anonymous`, connect needs no token; anonymous clients may not
/// subscribe unless the namespace allows it.
pub async fn anonymous_connect_when_allowed(wire: Wire) {
    let srv = Server::start_with(&[("HERALD_AUTH__ALLOW_ANONYMOUS", "true")]);
    let mut c = Client::open(srv.addr, wire).await;
    let res = c.connect_with(cmd::connect("")).await;
    assert!(!res.client.is_empty(), "{res:?}");
    assert!(!res.expires, "{res:?}");
    assert_eq!(c.err(cmd::subscribe("news")).await.code, 103);
    c.roundtrip().await;
}
