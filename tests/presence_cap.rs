//! A namespace's `max_presence_size` under concurrency: the check and the presence write
//! are one step (a Lua script on Redis), so simultaneous subscribes on several nodes
//! cannot overshoot it. Its own test binary: the servers run in-process and share one
//! metrics registry, and the rejections here would disturb the exact counts that
//! tests/limits.rs checks.

mod common;

use common::client::cmd;
use common::{tokens, Client, Server, Wire};
use herald::protocol::messages::Command;

const CAPPED: &str = r#"
[[namespaces]]
name = "crowd"
max_presence_size = 2
"#;

/// Clients present in `channel`, by the server API.
async fn present(srv: &Server, channel: &str) -> u64 {
    let body = srv
        .api()
        .call("presence_stats", serde_json::json!({"channel": channel}))
        .await;
    body["result"]["num_clients"]
        .as_u64()
        .unwrap_or_else(|| panic!("presence_stats: {body}"))
}

/// Eight clients on two nodes over one Redis ask to join a channel capped at two at the
/// same moment: exactly two get in (a count read before the write would let all eight
/// pass), and a server API subscribe cannot add a third either.
#[tokio::test]
async fn presence_cap_holds_for_concurrent_subscribes_across_nodes() {
    let redis = herald::cluster::testing::RedisServer::start();
    let url = redis.url();
    let env = [
        ("HERALD_BROKER__KIND", "redis"),
        ("HERALD_BROKER__REDIS_URL", url.as_str()),
    ];
    let a = Server::start_config(CAPPED, &env);
    let b = Server::start_config(CAPPED, &env);
    let mut clients = Vec::new();
    for i in 0..8 {
        let node = if i % 2 == 0 { &a } else { &b };
        let (c, _) =
            Client::connect(node.addr, Wire::Json, &tokens::connect(&format!("u{i}"))).await;
        clients.push(c);
    }
    let mut ids = Vec::new();
    for c in &mut clients {
        let id = c.next_id();
        c.send(&Command {
            id,
            ..cmd::subscribe("crowd:rush")
        })
        .await;
        ids.push(id);
    }
    let mut admitted = 0;
    for (c, id) in clients.iter_mut().zip(ids) {
        match c.wait_reply(id).await.error {
            None => admitted += 1,
            Some(e) => assert_eq!(e.code, 106, "{e:?}"),
        }
    }
    assert_eq!(admitted, 2, "a channel capped at two admitted {admitted}");
    assert_eq!(present(&a, "crowd:rush").await, 2);
    assert_eq!(present(&b, "crowd:rush").await, 2);

    // The server API's subscribe of a connected user is capped too. A session handles
    // its server-side subscribes in order, so a push for the full channel would come
    // before the one for the open channel.
    let (mut late, _) = Client::connect(a.addr, Wire::Json, &tokens::connect("late")).await;
    for channel in ["crowd:rush", "crowd:side"] {
        let body = a
            .api()
            .call(
                "subscribe",
                serde_json::json!({"user": "late", "channel": channel}),
            )
            .await;
        assert!(body.get("error").is_none(), "{body}");
    }
    let first = late
        .push_where("a subscribe push", |p| p.subscribe.is_some())
        .await;
    assert_eq!(
        first.channel, "crowd:side",
        "the full channel admitted late"
    );
    assert_eq!(present(&a, "crowd:rush").await, 2);
}
