//! connect, subscribe/unsubscribe, publish, presence, presence_stats, history, rpc,
//! send, and several commands in one frame.

use serde_json::json;

use crate::common::client::{cmd, data_json};
use crate::common::{tokens, Client, Server, Wire};
use herald::protocol::messages::{Command, StreamPosition, SubscribeRequest};

pub async fn connect_result(wire: Wire) {
    let srv = Server::start();
    let (mut c, res) = Client::connect(srv.addr, wire, &tokens::connect("alice")).await;
    assert!(!res.client.is_empty(), "client id: {res:?}");
    assert_eq!(res.ping, 25, "ping interval in seconds: {res:?}");
    assert!(res.pong, "server expects pongs: {res:?}");
    assert!(res.expires, "token has exp: {res:?}");
    assert!(res.ttl > 3000 && res.ttl <= 3600, "ttl: {res:?}");
    let (_c2, res2) = Client::connect(srv.addr, wire, &tokens::connect("alice")).await;
    assert_ne!(res.client, res2.client, "each connection gets its own id");
    c.roundtrip().await;
}

pub async fn subscribe_and_unsubscribe(wire: Wire) {
    let srv = Server::start();
    let api = srv.api();
    let (mut c, _) = Client::connect(srv.addr, wire, &tokens::connect("alice")).await;
    let r = c.ok(cmd::subscribe("chat:a")).await;
    assert!(r.subscribe.is_some(), "{r:?}");
    assert_eq!(c.err(cmd::subscribe("chat:a")).await.code, 105);
    c.ok(cmd::subscribe("chat:b")).await;

    let r = c.ok(cmd::unsubscribe("chat:a")).await;
    assert!(r.unsubscribe.is_some(), "{r:?}");
    api.publish("chat:a", json!({"n": 1})).await;
    api.publish("chat:b", json!({"n": 2})).await;
    // Pushes keep their order: the first one is chat:b's, so chat:a sent nothing.
    let p = c.next_pub("chat:b").await;
    assert_eq!(data_json(&p), json!({"n": 2}));

    c.ok(cmd::subscribe("chat:a")).await;
    api.publish("chat:a", json!({"n": 3})).await;
    assert_eq!(data_json(&c.next_pub("chat:a").await), json!({"n": 3}));
}

pub async fn publish_reaches_subscribers(wire: Wire) {
    let srv = Server::start();
    let (mut sub, _) = Client::connect(srv.addr, wire, &tokens::connect("alice")).await;
    let (mut publ, pres) = Client::connect(srv.addr, wire, &tokens::connect("bob")).await;
    sub.ok(cmd::subscribe("chat:pub")).await;
    publ.ok(cmd::subscribe("chat:pub")).await;

    let r = publ
        .ok(cmd::publish("chat:pub", &json!({"text": "hi"})))
        .await;
    assert!(r.publish.is_some(), "{r:?}");
    let p = sub.next_pub("chat:pub").await;
    assert_eq!(data_json(&p), json!({"text": "hi"}));
    assert_eq!(p.offset, 1);
    let info = p.info.expect("publisher info");
    assert_eq!(info.user, "bob");
    assert_eq!(info.client, pres.client);
    // The publisher, subscribed too, gets it as well.
    assert_eq!(publ.next_pub("chat:pub").await.offset, 1);

    publ.ok(cmd::publish("chat:pub", &json!({"text": "again"})))
        .await;
    let p = sub.next_pub("chat:pub").await;
    assert_eq!((p.offset, data_json(&p)), (2, json!({"text": "again"})));

    // Not subscribed: denied where only subscribers may publish, allowed in `open`.
    let (mut other, _) = Client::connect(srv.addr, wire, &tokens::connect("carol")).await;
    assert_eq!(
        other
            .err(cmd::publish("chat:pub", &json!({"x": 1})))
            .await
            .code,
        103
    );
    sub.ok(cmd::subscribe("open:x")).await;
    other.ok(cmd::publish("open:x", &json!({"x": 1}))).await;
    assert_eq!(data_json(&sub.next_pub("open:x").await), json!({"x": 1}));
}

pub async fn presence_lists_subscribers(wire: Wire) {
    let srv = Server::start();
    let (mut a, ares) = Client::connect(
        srv.addr,
        wire,
        &tokens::connect_with_info("alice", json!({"name": "Alice"})),
    )
    .await;
    let (mut b, bres) = Client::connect(srv.addr, wire, &tokens::connect("bob")).await;
    a.ok(cmd::subscribe("chat:p")).await;
    b.ok(cmd::subscribe("chat:p")).await;

    let r = a.ok(cmd::presence("chat:p")).await;
    let presence = r.presence.expect("presence result").presence;
    assert_eq!(presence.len(), 2, "{presence:?}");
    let alice = &presence[&ares.client];
    assert_eq!(
        (alice.user.as_str(), alice.client.as_str()),
        ("alice", ares.client.as_str())
    );
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&alice.conn_info).expect("conn_info json"),
        json!({"name": "Alice"})
    );
    assert_eq!(presence[&bres.client].user, "bob");

    b.ok(cmd::unsubscribe("chat:p")).await;
    let presence = a
        .ok(cmd::presence("chat:p"))
        .await
        .presence
        .unwrap()
        .presence;
    assert_eq!(
        presence.keys().collect::<Vec<_>>(),
        vec![&ares.client],
        "bob left"
    );

    // Only subscribers may ask in this namespace; `open` allows anyone.
    let (mut carol, _) = Client::connect(srv.addr, wire, &tokens::connect("carol")).await;
    assert_eq!(carol.err(cmd::presence("chat:p")).await.code, 103);
    carol.ok(cmd::presence("open:p")).await;
}

pub async fn presence_stats_counts_clients_and_users(wire: Wire) {
    let srv = Server::start();
    let (mut a1, _) = Client::connect(srv.addr, wire, &tokens::connect("alice")).await;
    let (mut a2, _) = Client::connect(srv.addr, wire, &tokens::connect("alice")).await;
    let (mut b, _) = Client::connect(srv.addr, wire, &tokens::connect("bob")).await;
    for c in [&mut a1, &mut a2, &mut b] {
        c.ok(cmd::subscribe("chat:s")).await;
    }
    let s = a1
        .ok(cmd::presence_stats("chat:s"))
        .await
        .presence_stats
        .expect("presence_stats result");
    assert_eq!((s.num_clients, s.num_users), (3, 2));

    drop(b);
    // The disconnect is processed asynchronously; poll (bounded) until it shows.
    let s = crate::common::within("bob's presence to go", async {
        loop {
            let s = a1
                .ok(cmd::presence_stats("chat:s"))
                .await
                .presence_stats
                .unwrap();
            if s.num_clients == 2 {
                return s;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!((s.num_clients, s.num_users), (2, 1));
    let (mut carol, _) = Client::connect(srv.addr, wire, &tokens::connect("carol")).await;
    assert_eq!(carol.err(cmd::presence_stats("chat:s")).await.code, 103);
}

fn offsets(r: &herald::protocol::messages::Reply) -> Vec<u64> {
    r.history
        .as_ref()
        .expect("history result")
        .publications
        .iter()
        .map(|p| p.offset)
        .collect()
}

pub async fn history_limit_since_reverse(wire: Wire) {
    let srv = Server::start();
    let api = srv.api();
    for n in 1..=5 {
        api.publish("chat:h", json!({"n": n})).await;
    }
    let (mut c, _) = Client::connect(srv.addr, wire, &tokens::connect("alice")).await;
    c.ok(cmd::subscribe("chat:h")).await;

    let all = c.ok(cmd::history("chat:h", -1, None, false)).await;
    assert_eq!(offsets(&all), vec![1, 2, 3, 4, 5]);
    let h = all.history.clone().unwrap();
    assert_eq!(h.offset, 5);
    assert!(!h.epoch.is_empty());
    let data: Vec<_> = h.publications.iter().map(data_json).collect();
    assert_eq!(data[0], json!({"n": 1}));
    assert_eq!(data[4], json!({"n": 5}));
    let since = |offset| {
        Some(StreamPosition {
            offset,
            epoch: h.epoch.clone(),
        })
    };

    let cases: Vec<(Command, Vec<u64>)> = vec![
        (cmd::history("chat:h", 2, None, false), vec![1, 2]),
        (cmd::history("chat:h", 2, None, true), vec![5, 4]),
        (cmd::history("chat:h", -1, since(2), false), vec![3, 4, 5]),
        (cmd::history("chat:h", 1, since(2), false), vec![3]),
        (cmd::history("chat:h", -1, since(4), true), vec![3, 2, 1]),
        (cmd::history("chat:h", -1, since(5), false), vec![]),
        (cmd::history("chat:h", 0, None, false), vec![]),
    ];
    for (command, want) in cases {
        let r = c.ok(command.clone()).await;
        assert_eq!(offsets(&r), want, "{command:?}");
        let h = r.history.unwrap();
        assert_eq!(h.offset, 5, "top offset for {command:?}");
    }
}

pub async fn history_errors(wire: Wire) {
    let srv = Server::start();
    srv.api().publish("chat:h", json!({"n": 1})).await;
    let (mut c, _) = Client::connect(srv.addr, wire, &tokens::connect("alice")).await;
    // Not subscribed where only subscribers may read history.
    assert_eq!(
        c.err(cmd::history("chat:h", -1, None, false)).await.code,
        103
    );
    c.ok(cmd::subscribe("chat:h")).await;
    let wrong_epoch = Some(StreamPosition {
        offset: 0,
        epoch: "not-the-epoch".into(),
    });
    assert_eq!(
        c.err(cmd::history("chat:h", -1, wrong_epoch, false))
            .await
            .code,
        112
    );
    // A namespace without history.
    c.ok(cmd::subscribe("nohist:x")).await;
    assert_eq!(
        c.err(cmd::history("nohist:x", -1, None, false)).await.code,
        108
    );
    c.roundtrip().await;
}

pub async fn rpc_unknown_method_is_104(wire: Wire) {
    let srv = Server::start();
    let (mut c, _) = Client::connect(srv.addr, wire, &tokens::connect("alice")).await;
    let e = c.err(cmd::rpc("no.such.method", &json!({"a": 1}))).await;
    assert_eq!(e.code, 104, "{e:?}");
    c.roundtrip().await;
}

pub async fn send_has_no_reply(wire: Wire) {
    let srv = Server::start();
    let (mut c, _) = Client::connect(srv.addr, wire, &tokens::connect("alice")).await;
    c.send(&cmd::send(&json!({"hello": "server"}))).await;
    c.send(&cmd::send(&json!({"hello": "again"}))).await;
    // The ping command was sent after both: its reply is the first thing back, and
    // nothing (no reply, no ping-like empty frame) answered the sends.
    c.roundtrip().await;
    assert_eq!(c.pings, 0, "a send got an (empty) reply");
    assert!(c.queued_pushes().is_empty(), "{:?}", c.queued_pushes());
    c.ok(cmd::subscribe("chat:x")).await;
}

pub async fn batch_in_one_frame_gets_every_reply(wire: Wire) {
    let srv = Server::start();
    let mut c = Client::open(srv.addr, wire).await;
    let with_id = |id, mut command: Command| {
        command.id = id;
        command
    };
    let batch = vec![
        with_id(1, cmd::connect(&tokens::connect("alice"))),
        with_id(
            2,
            cmd::subscribe_with(SubscribeRequest {
                channel: "open:batch".into(),
                ..Default::default()
            }),
        ),
        with_id(3, cmd::publish("open:batch", &json!({"n": 1}))),
        with_id(4, cmd::presence_stats("open:batch")),
        with_id(5, cmd::history("open:batch", -1, None, false)),
        with_id(6, cmd::rpc("nope", &json!({}))),
    ];
    c.send_batch(&batch).await;
    assert!(c.wait_reply(1).await.connect.is_some());
    assert!(c.wait_reply(2).await.subscribe.is_some());
    assert!(c.wait_reply(3).await.publish.is_some());
    let stats = c.wait_reply(4).await.presence_stats.expect("stats");
    assert_eq!(stats.num_clients, 1);
    assert_eq!(offsets(&c.wait_reply(5).await), vec![1]);
    assert_eq!(c.wait_reply(6).await.error.expect("rpc error").code, 104);
    assert_eq!(data_json(&c.next_pub("open:batch").await), json!({"n": 1}));

    // A batch on a connected client, too.
    let batch: Vec<Command> = (10..15).map(|id| with_id(id, cmd::ping())).collect();
    c.send_batch(&batch).await;
    for id in 10..15 {
        assert!(c.wait_reply(id).await.ping.is_some());
    }
}
