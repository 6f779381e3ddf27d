//! Persisted namespaces and conversations: durable history, membership, DMs,
//! idempotency, read markers, unread counts, typing, user data removal, restart.

mod common;

use common::client::{cmd, data_json};
use common::{tokens, Client, Server, Wire};
use herald::protocol::messages::{Reply, StreamPosition};
use serde_json::{json, Value};

pub const CHAT_TOML: &str = r#"
[store]
sync = "normal"

[[namespaces]]
name = "chat"
persist = true
members = true
allow_subscribe_for_client = false
force_recovery = true
client_message_id_field = "cid"

# Persisted, open to any subscriber, keeps the last 5 messages.
[[namespaces]]
name = "room"
persist = true
history_max_count = 5

# Not a conversation namespace.
[[namespaces]]
name = "plain"
"#;

/// A store directory removed when dropped.
#[derive(Debug)]
pub struct TempDir(std::path::PathBuf);

impl Default for TempDir {
    fn default() -> Self {
        Self::new()
    }
}

impl TempDir {
    pub fn new() -> TempDir {
        let p = std::env::temp_dir().join(format!("herald-test-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
    pub fn path(&self) -> &str {
        self.0.to_str().expect("utf-8 temp path")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn start(dir: &TempDir) -> Server {
    Server::start_config(CHAT_TOML, &[("HERALD_STORE__PATH", dir.path())])
}

fn rpc_json(r: &Reply) -> Value {
    let data = &r.rpc.as_ref().expect("rpc result").data;
    serde_json::from_slice(data).expect("rpc data is json")
}

async fn member_client(srv: &Server, user: &str, wire: Wire) -> Client {
    Client::connect(srv.addr, wire, &tokens::connect(user))
        .await
        .0
}

#[tokio::test]
async fn membership_authorizes_and_non_members_are_denied() {
    let dir = TempDir::new();
    let srv = start(&dir);
    let api = srv.api();
    api.ok(
        "conversation_create",
        json!({"channel": "chat:team", "users": ["alice", "bob"]}),
    )
    .await;
    let members = api
        .ok("conversation_members", json!({"channel": "chat:team"}))
        .await;
    assert_eq!(members["members"], json!(["alice", "bob"]));

    let mut alice = member_client(&srv, "alice", Wire::Json).await;
    let mut bob = member_client(&srv, "bob", Wire::Protobuf).await;
    let mut carol = member_client(&srv, "carol", Wire::Json).await;
    alice.ok(cmd::subscribe("chat:team")).await;
    bob.ok(cmd::publish("chat:team", &json!({"text": "hi"})))
        .await;
    assert_eq!(data_json(&alice.next_pub("chat:team").await)["text"], "hi");

    assert_eq!(carol.err(cmd::subscribe("chat:team")).await.code, 103);
    assert_eq!(
        carol
            .err(cmd::publish("chat:team", &json!({"x": 1})))
            .await
            .code,
        103
    );
    assert_eq!(
        carol
            .err(cmd::history("chat:team", 10, None, false))
            .await
            .code,
        103
    );
    assert_eq!(carol.err(cmd::presence("chat:team")).await.code, 103);

    // A DM: members implied by the name, nobody else.
    alice.ok(cmd::subscribe("chat:dm#alice,bob")).await;
    assert_eq!(
        carol.err(cmd::subscribe("chat:dm#alice,bob")).await.code,
        103
    );

    // Removing bob unsubscribes him and takes his rights away.
    bob.ok(cmd::subscribe("chat:team")).await;
    api.ok(
        "conversation_members_remove",
        json!({"channel": "chat:team", "users": ["bob"]}),
    )
    .await;
    let push = bob
        .push_where("unsubscribe push", |p| p.unsubscribe.is_some())
        .await;
    assert_eq!(push.unsubscribe.map(|u| u.code), Some(2000));
    assert_eq!(
        bob.err(cmd::publish("chat:team", &json!({"x": 1})))
            .await
            .code,
        103
    );

    // Conversation methods need a members namespace and real users.
    let e = api
        .call(
            "conversation_create",
            json!({"channel": "plain:x", "users": ["a"]}),
        )
        .await;
    assert_eq!(e["error"]["code"], 102, "{e}");
    let e = api
        .call(
            "conversation_create",
            json!({"channel": "chat:x", "users": []}),
        )
        .await;
    assert_eq!(e["error"]["code"], 107, "{e}");
}

#[tokio::test]
async fn full_history_pages_and_retention() {
    let dir = TempDir::new();
    let srv = start(&dir);
    let api = srv.api();
    api.ok(
        "conversation_create",
        json!({"channel": "chat:log", "users": ["alice"]}),
    )
    .await;
    let mut last = Value::Null;
    for i in 1..=300 {
        last = api.publish("chat:log", json!({"i": i})).await;
    }
    assert_eq!(last["offset"], 300);
    let epoch = last["epoch"].as_str().expect("epoch").to_string();

    let mut alice = member_client(&srv, "alice", Wire::Json).await;
    // Page forward through all 300 in pages of 50.
    let mut since = StreamPosition {
        offset: 0,
        epoch: epoch.clone(),
    };
    let mut seen = Vec::new();
    loop {
        let r = alice
            .ok(cmd::history("chat:log", 50, Some(since.clone()), false))
            .await;
        let h = r.history.expect("history");
        if h.publications.is_empty() {
            break;
        }
        seen.extend(h.publications.iter().map(|p| p.offset));
        since.offset = h.publications.last().map(|p| p.offset).unwrap_or(0);
    }
    assert_eq!(seen, (1..=300).collect::<Vec<_>>());
    // Newest first.
    let r = alice.ok(cmd::history("chat:log", 3, None, true)).await;
    let offsets: Vec<u64> = r
        .history
        .expect("history")
        .publications
        .iter()
        .map(|p| p.offset)
        .collect();
    assert_eq!(offsets, vec![300, 299, 298]);

    // A count-limited namespace keeps only its last 5.
    for i in 1..=8 {
        api.publish("room:small", json!({"i": i})).await;
    }
    let h = api
        .ok("history", json!({"channel": "room:small", "limit": 100}))
        .await;
    let offsets: Vec<u64> = h["publications"]
        .as_array()
        .expect("pubs")
        .iter()
        .map(|p| p["offset"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(offsets, vec![4, 5, 6, 7, 8]);
}

#[tokio::test]
async fn retries_are_stored_once() {
    let dir = TempDir::new();
    let srv = start(&dir);
    let api = srv.api();
    api.ok(
        "conversation_create",
        json!({"channel": "chat:idem", "users": ["alice"]}),
    )
    .await;
    let body = json!({"channel": "chat:idem", "data": {"text": "once"}, "idempotency_key": "k-1"});
    let first = api.ok("publish", body.clone()).await;
    let again = api.ok("publish", body).await;
    assert_eq!(first, again, "the retry gets the original's position");

    let mut alice = member_client(&srv, "alice", Wire::Json).await;
    alice
        .ok(cmd::publish(
            "chat:idem",
            &json!({"cid": "m-7", "text": "a"}),
        ))
        .await;
    alice
        .ok(cmd::publish(
            "chat:idem",
            &json!({"cid": "m-7", "text": "a"}),
        ))
        .await;
    alice
        .ok(cmd::publish(
            "chat:idem",
            &json!({"cid": "m-8", "text": "b"}),
        ))
        .await;
    let h = api
        .ok("history", json!({"channel": "chat:idem", "limit": 10}))
        .await;
    let texts: Vec<&str> = h["publications"]
        .as_array()
        .expect("pubs")
        .iter()
        .filter_map(|p| p["data"]["text"].as_str())
        .collect();
    assert_eq!(texts, vec!["once", "a", "b"]);
}

#[tokio::test]
async fn read_markers_unread_counts_and_ephemeral_events() {
    let dir = TempDir::new();
    let srv = start(&dir);
    let api = srv.api();
    api.ok(
        "conversation_create",
        json!({"channel": "chat:r", "users": ["alice", "bob"]}),
    )
    .await;
    for i in 1..=4 {
        api.publish("chat:r", json!({"i": i})).await;
    }
    api.publish("chat:dm#alice,bob", json!({"dm": 1})).await;

    let mut alice = member_client(&srv, "alice", Wire::Json).await;
    let mut bob = member_client(&srv, "bob", Wire::Protobuf).await;
    let sub = alice
        .ok(cmd::subscribe_recoverable("chat:r"))
        .await
        .subscribe
        .expect("subscribe");
    assert_eq!(sub.offset, 4);

    let unread = rpc_json(&bob.ok(cmd::rpc("chat.unread", &json!({}))).await);
    assert_eq!(unread["total"], 5, "{unread}");
    let r = rpc_json(
        &bob.ok(cmd::rpc(
            "chat.read",
            &json!({"channel": "chat:r", "offset": 3}),
        ))
        .await,
    );
    assert_eq!(r["offset"], 3);
    let read_event = alice.next_pub("chat:r").await;
    assert_eq!(read_event.offset, 0, "receipts take no offset");
    assert_eq!(
        data_json(&read_event),
        json!({"type": "read", "user": "bob", "offset": 3})
    );
    let unread = rpc_json(&bob.ok(cmd::rpc("chat.unread", &json!({}))).await);
    assert_eq!(unread["total"], 2, "{unread}");
    let convs = api.ok("user_conversations", json!({"user": "bob"})).await;
    assert_eq!(convs["total_unread"], 2, "{convs}");
    let dm = convs["conversations"]
        .as_array()
        .expect("list")
        .iter()
        .find(|c| c["channel"] == "chat:dm#alice,bob")
        .cloned()
        .expect("dm listed");
    assert_eq!(dm["last"]["data"], json!({"dm": 1}));

    bob.ok(cmd::rpc("chat.typing", &json!({"channel": "chat:r"})))
        .await;
    let typing = alice.next_pub("chat:r").await;
    assert_eq!(
        (typing.offset, data_json(&typing)["type"].clone()),
        (0, json!("typing"))
    );
    // The next real message continues the offsets: ephemeral events left no gap.
    api.publish("chat:r", json!({"i": 5})).await;
    assert_eq!(alice.next_pub("chat:r").await.offset, 5);
    alice.roundtrip().await;
    assert!(
        alice
            .queued_pushes()
            .iter()
            .all(|p| p.unsubscribe.is_none()),
        "no resubscribe was forced"
    );

    // Bad input.
    assert_eq!(
        bob.err(cmd::rpc("chat.read", &json!({"chan": 1})))
            .await
            .code,
        107
    );
    assert_eq!(
        bob.err(cmd::rpc(
            "chat.read",
            &json!({"channel": "plain:x", "offset": 1})
        ))
        .await
        .code,
        102
    );
    assert_eq!(
        bob.err(cmd::rpc(
            "chat.typing",
            &json!({"channel": "chat:dm#alice,carol"})
        ))
        .await
        .code,
        103
    );
    assert_eq!(bob.err(cmd::rpc("chat.nope", &json!({}))).await.code, 104);
}

#[tokio::test]
async fn user_data_remove_forgets_the_user() {
    let dir = TempDir::new();
    let srv = start(&dir);
    let api = srv.api();
    api.ok(
        "conversation_create",
        json!({"channel": "chat:g", "users": ["mallory", "trent"]}),
    )
    .await;
    let mut mallory = member_client(&srv, "mallory", Wire::Json).await;
    mallory
        .ok(cmd::publish("chat:g", &json!({"text": "secret"})))
        .await;
    api.publish("chat:g", json!({"text": "kept"})).await;
    let removed = api
        .ok(
            "user_data_remove",
            json!({"user": "mallory", "tombstone": true}),
        )
        .await;
    assert_eq!(removed["tombstoned"], 1);
    let members = api
        .ok("conversation_members", json!({"channel": "chat:g"}))
        .await;
    assert_eq!(members["members"], json!(["trent"]));
    let h = api
        .ok("history", json!({"channel": "chat:g", "limit": 10}))
        .await;
    let pubs = h["publications"].as_array().expect("pubs");
    assert_eq!(pubs[0]["data"], json!({"deleted": true}));
    assert_eq!(pubs[0]["offset"], 1);
    assert_eq!(pubs[1]["data"]["text"], "kept");
}

#[tokio::test]
async fn history_and_recovery_survive_a_restart() {
    let dir = TempDir::new();
    let srv = start(&dir);
    let api = srv.api();
    api.ok(
        "conversation_create",
        json!({"channel": "chat:keep", "users": ["alice"]}),
    )
    .await;
    let mut last = Value::Null;
    for i in 1..=20 {
        last = api.publish("chat:keep", json!({"i": i})).await;
    }
    srv.join().await.expect("clean stop");

    let srv = start(&dir);
    let api = srv.api();
    for i in 21..=25 {
        api.publish("chat:keep", json!({"i": i})).await;
    }
    let mut alice = member_client(&srv, "alice", Wire::Json).await;
    let epoch = last["epoch"].as_str().expect("epoch");
    let r = alice
        .ok(cmd::subscribe_recover("chat:keep", 18, epoch))
        .await
        .subscribe
        .expect("subscribe");
    assert!(r.recovered, "recovered across the restart: {r:?}");
    let offsets: Vec<u64> = r.publications.iter().map(|p| p.offset).collect();
    assert_eq!(offsets, (19..=25).collect::<Vec<_>>());
    assert_eq!(r.epoch, epoch, "the epoch is durable");
}
