//! Token revocation (server API `revoke_token`, `invalidate_user_tokens`): what is
//! refused, what is left alone, when deny-list entries expire, and that a revocation
//! sent to one node of a cluster reaches connections on the others and nodes that join
//! later.

mod common;

use std::time::Duration;

use common::client::cmd;
use common::{tokens, Client, Server, Wire, SECRET};
use herald::cluster::testing::RedisServer;
use herald::protocol::messages::Command;
use serde_json::json;

fn token(user: &str, jti: &str, iat: i64) -> String {
    tokens::sign(
        &json!({"sub": user, "jti": jti, "iat": iat, "exp": common::now() + 600}),
        SECRET,
    )
}

/// Sends connect and expects the server to close with `code`.
async fn refused(srv: &Server, token: &str, code: u16) {
    let mut s = Client::open(srv.addr, Wire::Json).await;
    s.send(&Command {
        id: 1,
        ..cmd::connect(token)
    })
    .await;
    assert_eq!(s.expect_close().await.code, code);
}

#[tokio::test]
async fn revoke_token_hits_only_that_token_until_its_entry_expires() {
    let srv = Server::start();
    let api = srv.api();
    let now = common::now();
    let (mut a1, _) = Client::connect(srv.addr, Wire::Json, &token("alice", "a1", now)).await;
    let (mut a2, _) = Client::connect(srv.addr, Wire::Protobuf, &token("alice", "a2", now)).await;
    let (mut b1, _) = Client::connect(srv.addr, Wire::Json, &token("bob", "a1-not", now)).await;

    // The entry lives until expire_at (2 s from now), then the token works again.
    api.ok("revoke_token", json!({"uid": "a1", "expire_at": now + 2}))
        .await;
    let close = a1.expect_close().await;
    assert_eq!((close.code, close.reason.as_str()), (3500, "invalid token"));
    a2.roundtrip().await;
    b1.roundtrip().await;
    refused(&srv, &token("alice", "a1", now), 3500).await;
    while common::now() < now + 2 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Client::connect(srv.addr, Wire::Json, &token("alice", "a1", now)).await;

    // Bad requests name what is wrong.
    let r = api.call("revoke_token", json!({})).await;
    assert_eq!(r["error"]["code"], 107, "{r}");
    let r = api
        .call(
            "invalidate_user_tokens",
            json!({"user": "alice", "channel": "nope:x"}),
        )
        .await;
    assert_eq!(r["error"]["code"], 102, "{r}");
    let r = api.call("invalidate_user_tokens", json!({})).await;
    assert_eq!(r["error"]["code"], 107, "{r}");
}

#[tokio::test]
async fn invalidate_user_tokens_spares_newer_tokens_and_other_users() {
    let srv = Server::start();
    let api = srv.api();
    let now = common::now();
    let (mut old, _) =
        Client::connect(srv.addr, Wire::Json, &token("carol", "c1", now - 100)).await;
    let (mut no_iat, _) = Client::connect(
        srv.addr,
        Wire::Json,
        &tokens::sign(&json!({"sub": "carol"}), SECRET),
    )
    .await;
    let (mut newer, _) = Client::connect(srv.addr, Wire::Json, &token("carol", "c2", now)).await;
    let (mut dan, _) = Client::connect(srv.addr, Wire::Json, &token("dan", "d1", now - 100)).await;
    api.ok(
        "invalidate_user_tokens",
        json!({"user": "carol", "issued_before": now - 50}),
    )
    .await;
    assert_eq!(old.expect_close().await.code, 3500);
    // A token without iat cannot prove it is newer.
    assert_eq!(no_iat.expect_close().await.code, 3500);
    newer.roundtrip().await;
    dan.roundtrip().await;
    refused(&srv, &token("carol", "c3", now - 60), 3500).await;
    Client::connect(srv.addr, Wire::Json, &token("carol", "c4", now - 10)).await;

    // Default issued_before is now: every token carol has from an earlier second is
    // refused (iat has second resolution, hence the waits), a fresh one works.
    while common::now() <= now {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    api.ok("invalidate_user_tokens", json!({"user": "carol"}))
        .await;
    assert_eq!(newer.expect_close().await.code, 3500);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (mut fresh, _) =
        Client::connect(srv.addr, Wire::Json, &token("carol", "c5", common::now())).await;
    fresh.roundtrip().await;
}

fn sub_token(user: &str, channel: &str, iat: i64) -> String {
    tokens::sign(
        &json!({"sub": user, "channel": channel, "iat": iat, "exp": common::now() + 600}),
        SECRET,
    )
}

#[tokio::test]
async fn invalidate_user_tokens_with_a_channel_ends_subscriptions_made_with_older_tokens() {
    let srv = Server::start();
    let api = srv.api();
    let now = common::now();
    let (mut alice, _) = Client::connect(srv.addr, Wire::Json, &tokens::connect("alice")).await;
    let (a_old, b_old) = (
        sub_token("alice", "secret:a", now - 100),
        sub_token("alice", "secret:b", now - 100),
    );
    alice.ok(cmd::subscribe_token("secret:a", &a_old)).await;
    alice.ok(cmd::subscribe_token("secret:b", &b_old)).await;
    api.ok(
        "invalidate_user_tokens",
        json!({"user": "alice", "channel": "secret:a", "issued_before": now - 50}),
    )
    .await;
    let p = common::within(
        "unsubscribe push",
        alice.push_where("unsubscribe", |p| p.unsubscribe.is_some()),
    )
    .await;
    assert_eq!(p.channel, "secret:a");
    assert_eq!(p.unsubscribe.expect("unsubscribe").code, 2000);
    // The connection and the other subscription stay.
    api.publish("secret:b", json!({"n": 1})).await;
    assert_eq!(
        common::client::data_json(&alice.next_pub("secret:b").await),
        json!({"n": 1})
    );
    // The old token is refused on subscribe (103); a newer one works, and sub_refresh
    // with an old token is refused too.
    assert_eq!(
        alice
            .err(cmd::subscribe_token("secret:a", &a_old))
            .await
            .code,
        103
    );
    alice
        .ok(cmd::subscribe_token(
            "secret:a",
            &sub_token("alice", "secret:a", now - 10),
        ))
        .await;
    assert_eq!(
        alice
            .err(cmd::sub_refresh(
                "secret:a",
                &sub_token("alice", "secret:a", now - 60)
            ))
            .await
            .code,
        103
    );
    alice.roundtrip().await;
}

const CLUSTER_TOML: &str = r#"
[http]
workers = 2
shutdown_timeout = "3s"

[broker]
kind = "redis"
redis_timeout = "1s"
node_heartbeat = "300ms"
node_ttl = "3s"
"#;

#[tokio::test]
async fn revocations_reach_every_node_of_a_cluster() {
    let redis = RedisServer::start();
    let url = redis.url();
    let a = Server::start_config(CLUSTER_TOML, &[("HERALD_BROKER__REDIS_URL", &url)]);
    let b = Server::start_config(CLUSTER_TOML, &[("HERALD_BROKER__REDIS_URL", &url)]);
    let now = common::now();
    // Both nodes answer before the revocation is sent.
    let (mut on_b, _) = Client::connect(b.addr, Wire::Json, &token("erin", "e1", now)).await;
    let (mut old_on_b, _) =
        Client::connect(b.addr, Wire::Json, &token("frank", "f1", now - 100)).await;
    Client::connect(a.addr, Wire::Json, &tokens::connect("x"))
        .await
        .0
        .roundtrip()
        .await;
    a.api().ok("revoke_token", json!({"uid": "e1"})).await;
    a.api()
        .ok(
            "invalidate_user_tokens",
            json!({"user": "frank", "issued_before": now - 10}),
        )
        .await;
    assert_eq!(on_b.expect_close().await.code, 3500);
    assert_eq!(old_on_b.expect_close().await.code, 3500);
    refused(&b, &token("erin", "e1", now), 3500).await;
    refused(&b, &token("frank", "f2", now - 100), 3500).await;
    Client::connect(b.addr, Wire::Json, &token("frank", "f3", now))
        .await
        .0
        .roundtrip()
        .await;

    // A node that joins later loads the revocations still in force from Redis.
    let c = Server::start_config(CLUSTER_TOML, &[("HERALD_BROKER__REDIS_URL", &url)]);
    refused(&c, &token("erin", "e1", now), 3500).await;
    refused(&c, &token("frank", "f4", now - 100), 3500).await;
    Client::connect(c.addr, Wire::Json, &token("erin", "e2", now))
        .await
        .0
        .roundtrip()
        .await;
}
