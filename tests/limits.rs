//! Abuse limits: each refusal carries its documented code and is counted in
//! `herald_limit_rejections_total{limit=...}`.

mod common;

use common::client::cmd;
use common::{tokens, Client, Server, Wire};
use herald::protocol::messages::Command;
use tokio_tungstenite::tungstenite::Error;

/// The counter's value for `limit` on the server's /metrics page.
async fn rejections(srv: &Server, limit: &str) -> f64 {
    let page = reqwest::get(format!("http://{}/metrics", srv.addr))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body");
    let series = format!("herald_limit_rejections_total{{limit=\"{limit}\"}} ");
    page.lines()
        .find_map(|l| l.strip_prefix(&series))
        .unwrap_or_else(|| panic!("no series {series} in:\n{page}"))
        .trim()
        .parse()
        .expect("counter value")
}

/// The handshake's HTTP status and body: 101 and empty when the WebSocket opened.
async fn handshake(srv: &Server) -> (u16, String) {
    handshake_from(srv, None).await
}

/// Like [`handshake`], with an `X-Forwarded-For` header.
async fn handshake_from(srv: &Server, forwarded_for: Option<&str>) -> (u16, String) {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = srv.ws_url().into_client_request().expect("request");
    if let Some(f) = forwarded_for {
        req.headers_mut()
            .insert("X-Forwarded-For", f.parse().expect("header"));
    }
    match common::within("handshake", tokio_tungstenite::connect_async(req)).await {
        Ok((_, resp)) => (resp.status().as_u16(), String::new()),
        Err(Error::Http(resp)) => {
            let body = resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            (resp.status().as_u16(), body)
        }
        Err(e) => panic!("handshake failed without an HTTP answer: {e}"),
    }
}

#[tokio::test]
async fn connection_rate_per_ip_refuses_the_upgrade_with_429() {
    // One upgrade a second with bursts of 3: the 4th and later ones in a row are refused.
    let srv = Server::start_with(&[
        ("HERALD_CLIENT__CONNECT_RATE_PER_IP", "1"),
        ("HERALD_CLIENT__CONNECT_BURST_PER_IP", "3"),
    ]);
    let before = rejections(&srv, "connect_per_ip").await;
    let mut statuses = Vec::new();
    let mut refused_body = None;
    for _ in 0..6 {
        let (status, body) = handshake(&srv).await;
        if status == 429 {
            refused_body.get_or_insert(body);
        }
        statuses.push(status);
    }
    assert_eq!(&statuses[..3], &[101, 101, 101], "{statuses:?}");
    assert_eq!(&statuses[4..], &[429, 429], "{statuses:?}");
    let refused = statuses.iter().filter(|s| **s == 429).count();
    let body: serde_json::Value =
        serde_json::from_str(&refused_body.expect("a refused body")).expect("JSON error body");
    assert_eq!(body["error"]["code"], 111, "{body}");
    assert_eq!(body["error"]["message"], "too many requests", "{body}");
    assert_eq!(
        rejections(&srv, "connect_per_ip").await - before,
        refused as f64
    );

    // Once the bucket refills the same address connects again.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    Client::connect(srv.addr, Wire::Json, &tokens::connect("alice")).await;
}

#[tokio::test]
async fn forwarded_for_counts_only_behind_a_trusted_proxy() {
    let limited = [
        ("HERALD_CLIENT__CONNECT_RATE_PER_IP", "1"),
        ("HERALD_CLIENT__CONNECT_BURST_PER_IP", "1"),
    ];
    // Without trusted proxies the header is ignored: both share 127.0.0.1's bucket.
    let direct = Server::start_with(&limited);
    assert_eq!(handshake_from(&direct, Some("192.0.2.1")).await.0, 101);
    assert_eq!(handshake_from(&direct, Some("192.0.2.2")).await.0, 429);

    // Behind a trusted proxy (the test client's 127.0.0.1) each client has its own.
    let mut env = limited.to_vec();
    env.push(("HERALD_HTTP__TRUSTED_PROXIES", "127.0.0.1"));
    let proxied = Server::start_with(&env);
    assert_eq!(handshake_from(&proxied, Some("192.0.2.1")).await.0, 101);
    assert_eq!(handshake_from(&proxied, Some("192.0.2.1")).await.0, 429);
    assert_eq!(handshake_from(&proxied, Some("192.0.2.2")).await.0, 101);
    // A client cannot escape its bucket by prepending a forged entry.
    assert_eq!(
        handshake_from(&proxied, Some("203.0.113.9, 192.0.2.2"))
            .await
            .0,
        429
    );

    // A range: every hop in 127.0.0.0/8 is a proxy, so the client is the entry left of
    // them (with only 127.0.0.1 trusted it would be 127.0.0.5, and the second
    // handshake would find a fresh bucket).
    env.pop();
    env.push(("HERALD_HTTP__TRUSTED_PROXIES", "127.0.0.0/8"));
    let ranged = Server::start_with(&env);
    assert_eq!(
        handshake_from(&ranged, Some("192.0.2.3, 127.0.0.5"))
            .await
            .0,
        101
    );
    assert_eq!(handshake_from(&ranged, Some("192.0.2.3")).await.0, 429);
}

#[tokio::test]
async fn connection_rate_is_off_by_default() {
    let srv = Server::start();
    for _ in 0..20 {
        assert_eq!(handshake(&srv).await.0, 101);
    }
}

/// Sends `n` pings on `c` in one batch and returns the error codes of their replies.
async fn ping_codes(c: &mut Client, n: u32) -> Vec<Option<u32>> {
    let first = c.next_id();
    let batch: Vec<Command> = (0..n)
        .map(|i| Command {
            id: first + i,
            ..cmd::ping()
        })
        .collect();
    for _ in 1..n {
        c.next_id();
    }
    c.send_batch(&batch).await;
    let mut codes = Vec::new();
    for i in 0..n {
        codes.push(c.wait_reply(first + i).await.error.map(|e| e.code));
    }
    codes
}

#[tokio::test]
async fn user_command_rate_is_shared_by_the_users_connections() {
    // The per-connection limit stays generous; the user's own is 1/s with bursts of 4.
    let srv = Server::start_with(&[
        ("HERALD_CLIENT__USER_COMMAND_RATE", "1"),
        ("HERALD_CLIENT__USER_COMMAND_BURST", "4"),
    ]);
    let before = rejections(&srv, "user_commands").await;
    let (mut a, _) = Client::connect(srv.addr, Wire::Json, &tokens::connect("alice")).await;
    let (mut b, _) = Client::connect(srv.addr, Wire::Json, &tokens::connect("alice")).await;
    let (mut other, _) = Client::connect(srv.addr, Wire::Json, &tokens::connect("bob")).await;

    assert_eq!(ping_codes(&mut a, 3).await, vec![None, None, None]);
    // Alice's second connection has only one token left of the shared bucket.
    let codes = ping_codes(&mut b, 3).await;
    assert_eq!(codes[0], None, "{codes:?}");
    assert_eq!(&codes[1..], &[Some(111), Some(111)], "{codes:?}");
    // Error 111 leaves the connection open, and other users are not affected.
    assert_eq!(ping_codes(&mut other, 4).await, vec![None; 4]);
    // At least: the cluster test below counts into the same process-wide series.
    assert!(rejections(&srv, "user_commands").await - before >= 2.0);
}

/// `capped` limits publication data to 16 bytes; channels without a namespace do not.
const SIZE_TOML: &str = r#"
[http]
workers = 2
shutdown_timeout = "3s"

[channel]
allow_publish_for_client = true

[[namespaces]]
name = "capped"
allow_publish_for_client = true
max_publication_size = 16

[[namespaces]]
name = "crowd"
max_presence_size = 2
"#;

#[tokio::test]
async fn publication_size_per_namespace() {
    let srv = Server::start_config(SIZE_TOML, &[]);
    let before = rejections(&srv, "publication_size").await;
    let (mut c, _) = Client::connect(srv.addr, Wire::Json, &tokens::connect("alice")).await;
    c.ok(cmd::subscribe("capped:room")).await;

    // `"0123456789abcd"` is 16 bytes of JSON: at the limit. One more byte is over it.
    let fits = serde_json::json!("0123456789abcd");
    let over = serde_json::json!("0123456789abcde");
    c.ok(cmd::publish("capped:room", &fits)).await;
    assert_eq!(c.next_pub("capped:room").await.data, cmd::json(&fits));
    let e = c.err(cmd::publish("capped:room", &over)).await;
    assert_eq!((e.code, e.message.as_str()), (106, "limit exceeded"));
    // The connection stays usable and the other namespace has no limit.
    c.ok(cmd::publish("plain", &serde_json::json!("x".repeat(1000))))
        .await;

    // The server API gets the same code in its error object, and nothing is published.
    let api = srv.api();
    let body = api
        .call(
            "publish",
            serde_json::json!({"channel": "capped:room", "data": over}),
        )
        .await;
    assert_eq!(body["error"]["code"], 106, "{body}");
    api.publish("capped:room", fits.clone()).await;
    assert_eq!(c.next_pub("capped:room").await.data, cmd::json(&fits));
    assert_eq!(rejections(&srv, "publication_size").await - before, 2.0);
}

#[tokio::test]
async fn presence_size_per_channel() {
    let srv = Server::start_config(SIZE_TOML, &[]);
    let before = rejections(&srv, "presence_size").await;
    let mut clients = Vec::new();
    for user in ["u1", "u2", "u3"] {
        let (c, _) = Client::connect(srv.addr, Wire::Json, &tokens::connect(user)).await;
        clients.push(c);
    }
    clients[0].ok(cmd::subscribe("crowd:hall")).await;
    clients[1].ok(cmd::subscribe("crowd:hall")).await;
    let e = clients[2].err(cmd::subscribe("crowd:hall")).await;
    assert_eq!((e.code, e.message.as_str()), (106, "limit exceeded"));
    assert_eq!(rejections(&srv, "presence_size").await - before, 1.0);
    // Another channel of the namespace has its own presence.
    clients[2].ok(cmd::subscribe("crowd:lobby")).await;

    // A client leaving makes room.
    clients[0].ok(cmd::unsubscribe("crowd:hall")).await;
    clients[2].ok(cmd::subscribe("crowd:hall")).await;
    let present = clients[1].ok(cmd::presence_stats("crowd:hall")).await;
    assert_eq!(present.presence_stats.expect("stats").num_clients, 2);
}

#[tokio::test]
async fn user_command_rate_is_cluster_wide_on_redis() {
    // Two nodes on one Redis: alice's connections on A and B share one bucket, which a
    // per-node bucket (4 tokens each) would not.
    let redis = herald::cluster::testing::RedisServer::start();
    let url = redis.url();
    let env = [
        ("HERALD_BROKER__KIND", "redis"),
        ("HERALD_BROKER__REDIS_URL", url.as_str()),
        ("HERALD_CLIENT__USER_COMMAND_RATE", "1"),
        ("HERALD_CLIENT__USER_COMMAND_BURST", "4"),
    ];
    let a = Server::start_with(&env);
    let b = Server::start_with(&env);
    let before = rejections(&b, "user_commands").await;
    let (mut on_a, _) = Client::connect(a.addr, Wire::Json, &tokens::connect("alice")).await;
    let (mut on_b, _) = Client::connect(b.addr, Wire::Json, &tokens::connect("alice")).await;
    let (mut bob, _) = Client::connect(b.addr, Wire::Json, &tokens::connect("bob")).await;

    assert_eq!(ping_codes(&mut on_a, 3).await, vec![None, None, None]);
    let codes = ping_codes(&mut on_b, 3).await;
    assert_eq!(codes[0], None, "{codes:?}");
    assert_eq!(&codes[1..], &[Some(111), Some(111)], "{codes:?}");
    assert_eq!(ping_codes(&mut bob, 4).await, vec![None; 4]);
    assert!(rejections(&b, "user_commands").await - before >= 2.0);
}

#[tokio::test]
async fn user_command_rate_on_a_redis_cluster() {
    // Three masters: each user's bucket lives on the master of its hash-tagged key; a
    // key on the wrong master would fail (MOVED) and fall back to per-node buckets,
    // which would let node B answer all three pings below.
    let redis = herald::cluster::testing::RedisCluster::start(3);
    let url = redis.url();
    let env = [
        ("HERALD_BROKER__KIND", "redis"),
        ("HERALD_BROKER__REDIS_CLUSTER", "true"),
        ("HERALD_BROKER__REDIS_URL", url.as_str()),
        ("HERALD_CLIENT__USER_COMMAND_RATE", "1"),
        ("HERALD_CLIENT__USER_COMMAND_BURST", "4"),
    ];
    let a = Server::start_with(&env);
    let b = Server::start_with(&env);
    for user in ["alice", "bob", "carol", "dave", "erin", "frank"] {
        let (mut on_a, _) = Client::connect(a.addr, Wire::Json, &tokens::connect(user)).await;
        let (mut on_b, _) = Client::connect(b.addr, Wire::Json, &tokens::connect(user)).await;
        assert_eq!(
            ping_codes(&mut on_a, 3).await,
            vec![None, None, None],
            "{user}"
        );
        let codes = ping_codes(&mut on_b, 3).await;
        assert_eq!(codes, vec![None, Some(111), Some(111)], "{user}");
    }
}
