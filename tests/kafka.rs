//! Kafka ingest and egress against librdkafka's in-process mock cluster (several
//! brokers): records become publications on WebSockets in per-partition order, bad
//! records go to the dead-letter topic, chat publications come out on the egress topic.

mod common;
mod kafka_support;

use std::collections::HashMap;

use common::Server;
use kafka_support::{header, wait_ingest_ok, Mock, TempDir, Watcher, FAST_GROUP, KAFKA_WAIT};
use rdkafka::Message;
use serde_json::{json, Value};

fn ingest_toml(extra: &str) -> String {
    format!(
        r#"
[http]
workers = 2
shutdown_timeout = "3s"

[kafka]
ingest_enabled = true
commit_interval = "200ms"
{FAST_GROUP}
{extra}

[[namespaces]]
name = "news"
"#
    )
}

/// Records of one partition are applied one after the other, whatever their channel;
/// partitions run side by side. Brokers and topics come from the environment,
/// comma-separated.
#[tokio::test]
async fn records_reach_websockets_in_partition_order() {
    let mock = Mock::new(3);
    mock.topic("orders", 2);
    mock.topic("alerts", 1);
    let srv = Server::start_config(
        &ingest_toml(""),
        &[
            ("HERALD_KAFKA__BROKERS", &mock.bootstrap()),
            ("HERALD_KAFKA__TOPICS", "orders, alerts"),
            ("HERALD_KAFKA__GROUP_ID", "order-test"),
        ],
    );
    let mut w =
        Watcher::subscribe(srv.addr, "alice", &["news:a", "news:b", "news:c", "news:d"]).await;
    wait_ingest_ok(srv.addr).await;

    // Partition 0 alternates news:a and news:b; partition 1 and topic alerts have
    // their own channels. The producer interleaves them.
    const N: u64 = 40;
    for seq in 0..N {
        let ch = if seq % 2 == 0 { "news:a" } else { "news:b" };
        mock.publish("orders", 0, ch, seq).await;
        mock.publish("orders", 1, "news:c", seq).await;
        mock.publish("alerts", 0, "news:d", seq).await;
    }
    let got = w.seqs(3 * N as usize).await;
    let mut by_source: HashMap<&str, Vec<u64>> = HashMap::new();
    for (ch, seq) in &got {
        let source = match ch.as_str() {
            "news:a" | "news:b" => "orders/0",
            "news:c" => "orders/1",
            _ => "alerts/0",
        };
        by_source.entry(source).or_default().push(*seq);
    }
    let expected: Vec<u64> = (0..N).collect();
    for source in ["orders/0", "orders/1", "alerts/0"] {
        assert_eq!(
            by_source[source], expected,
            "{source} out of order: {got:?}"
        );
    }
    w.assert_no_more().await;
}

/// A partition far beyond its prefetch bound: with `kafka.partition_buffer = 1` every
/// fetched record fills the partition's queue, so librdkafka stops fetching it after
/// each record and must come back by itself once the worker took it (nothing tells it
/// to). Every record arrives, in order, once, within one ordinary wait for the whole
/// run. The wait is no measurement; it is what a stall per record breaks: Herald's old
/// pause and resume, or librdkafka's default `fetch.queue.backoff.ms`, cost up to a
/// second per record here (about 200 s).
#[tokio::test]
async fn a_partition_far_beyond_its_prefetch_bound_is_applied_in_full() {
    let mock = Mock::new(1);
    mock.topic("burst", 1);
    let srv = Server::start_config(
        &ingest_toml(""),
        &[
            ("HERALD_KAFKA__BROKERS", &mock.bootstrap()),
            ("HERALD_KAFKA__TOPICS", "burst"),
            ("HERALD_KAFKA__PARTITION_BUFFER", "1"),
        ],
    );
    let mut w = Watcher::subscribe(srv.addr, "bea", &["news:burst"]).await;
    wait_ingest_ok(srv.addr).await;
    const N: u64 = 200;
    for seq in 0..N {
        mock.publish("burst", 0, "news:burst", seq).await;
    }
    let got = tokio::time::timeout(KAFKA_WAIT, w.seqs(N as usize))
        .await
        .unwrap_or_else(|_| panic!("{N} records not applied within {KAFKA_WAIT:?}"));
    let seqs: Vec<u64> = got.into_iter().map(|(_, s)| s).collect();
    assert_eq!(seqs, (0..N).collect::<Vec<_>>());
    w.assert_no_more().await;
}

/// Bad records are dead-lettered with the error in headers (and their own key, value
/// and headers kept), counted, and never stop the partition.
#[tokio::test]
async fn bad_records_go_to_the_dead_letter_topic() {
    let mock = Mock::new(2);
    mock.topic("cmds", 1);
    mock.topic("cmds.dlq", 1);
    let srv = Server::start_config(
        &ingest_toml(r#"dlq_topic = "cmds.dlq""#),
        &[
            ("HERALD_KAFKA__BROKERS", &mock.bootstrap()),
            ("HERALD_KAFKA__TOPICS", "cmds"),
        ],
    );
    let mut w = Watcher::subscribe(srv.addr, "bob", &["news:x"]).await;
    wait_ingest_ok(srv.addr).await;

    let bad: Vec<(&[u8], u64, &str)> = vec![
        (b"not json", 107, "not a command"),
        (br#"{"method":"nope","payload":{}}"#, 104, "nope"),
        (
            br#"{"method":"history","payload":{"channel":"news:x"}}"#,
            104,
            "history",
        ),
        (
            br#"{"method":"publish","payload":{"channel":"nowhere:x","data":{}}}"#,
            102,
            "unknown channel",
        ),
        (
            br#"{"method":"publish","payload":{"channel":"news:x"}}"#,
            107,
            "data required",
        ),
    ];
    mock.publish("cmds", 0, "news:x", 1).await;
    for (i, (value, _, _)) in bad.iter().enumerate() {
        let key = format!("bad-{i}");
        mock.produce("cmds", 0, Some(&key), value, &[("trace", "t-1")])
            .await;
    }
    mock.publish("cmds", 0, "news:x", 2).await;

    assert_eq!(
        w.seqs(2).await,
        vec![("news:x".to_string(), 1), ("news:x".to_string(), 2)]
    );
    let dead = mock.read("cmds.dlq", 1, bad.len()).await;
    for (i, (m, (value, code, words))) in dead.iter().zip(&bad).enumerate() {
        assert_eq!(m.payload(), Some(*value), "dead letter {i}");
        assert_eq!(m.key(), Some(format!("bad-{i}").as_bytes()));
        assert_eq!(header(m, "trace").as_deref(), Some("t-1"));
        assert_eq!(header(m, "herald-error-code"), Some(code.to_string()));
        let message = header(m, "herald-error-message").unwrap_or_default();
        assert!(message.contains(words), "dead letter {i}: {message}");
        assert_eq!(header(m, "herald-source-topic").as_deref(), Some("cmds"));
        assert_eq!(header(m, "herald-source-partition").as_deref(), Some("0"));
        assert_eq!(header(m, "herald-source-offset"), Some((i + 1).to_string()));
    }
    let metrics = reqwest::get(format!("http://{}/metrics", srv.addr))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    assert!(
        metrics.contains(r#"herald_kafka_records_dead_lettered_total{topic="cmds"} 5"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"herald_kafka_records_applied_total{topic="cmds"} 2"#));
}

/// A publish with an idempotency key (payload field or header) that is produced twice
/// is stored once in a persisted namespace.
#[tokio::test]
async fn idempotency_keys_deduplicate_repeated_records() {
    let mock = Mock::new(1);
    mock.topic("keyed", 1);
    let dir = TempDir::new();
    let srv = Server::start_config(
        &ingest_toml("\n[[namespaces]]\nname = \"room\"\npersist = true\n"),
        &[
            ("HERALD_KAFKA__BROKERS", &mock.bootstrap()),
            ("HERALD_KAFKA__TOPICS", "keyed"),
            ("HERALD_STORE__PATH", dir.path()),
        ],
    );
    let mut w = Watcher::subscribe(srv.addr, "carol", &["room:k"]).await;
    wait_ingest_ok(srv.addr).await;
    let in_payload = json!({"method": "publish", "payload": {"channel": "room:k", "data": {"seq": 1}, "idempotency_key": "order-1"}});
    let in_header =
        json!({"method": "publish", "payload": {"channel": "room:k", "data": {"seq": 2}}});
    for _ in 0..2 {
        mock.produce("keyed", 0, None, in_payload.to_string().as_bytes(), &[])
            .await;
        mock.produce(
            "keyed",
            0,
            None,
            in_header.to_string().as_bytes(),
            &[("idempotency_key", "order-2")],
        )
        .await;
    }
    mock.publish("keyed", 0, "room:k", 3).await;
    let got: Vec<u64> = w.seqs(3).await.into_iter().map(|(_, s)| s).collect();
    assert_eq!(got, vec![1, 2, 3]);
    w.assert_no_more().await;
}

/// Every publication of the egress namespaces reaches the egress topic, keyed by
/// channel, in each channel's offset order, with its position, data and publisher.
#[tokio::test]
async fn egress_topic_holds_every_chat_publication_in_order() {
    let mock = Mock::new(3);
    mock.topic("herald.publications", 3);
    let dir = TempDir::new();
    let toml = r#"
[http]
workers = 2
shutdown_timeout = "3s"

[kafka]
egress_enabled = true
egress_namespaces = ["chat"]

[[namespaces]]
name = "chat"
persist = true

[[namespaces]]
name = "news"
"#;
    let srv = Server::start_config(
        toml,
        &[
            ("HERALD_KAFKA__BROKERS", &mock.bootstrap()),
            ("HERALD_STORE__PATH", dir.path()),
        ],
    );
    let api = srv.api();
    const N: u64 = 30;
    for seq in 0..N {
        let ch = if seq % 3 == 0 { "chat:b" } else { "chat:a" };
        api.publish(ch, json!({"seq": seq})).await;
        api.publish("news:x", json!({"seq": seq})).await;
    }
    let records = mock.read("herald.publications", 3, N as usize).await;
    let mut per_channel: HashMap<String, Vec<(u64, u64)>> = HashMap::new();
    for m in &records {
        let v: Value = serde_json::from_slice(m.payload().unwrap_or_default()).expect("json value");
        let ch = v["channel"].as_str().expect("channel").to_string();
        assert_eq!(m.key(), Some(ch.as_bytes()), "key = channel");
        assert!(v["epoch"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
        assert!(v["timestamp"].as_i64().is_some_and(|t| t > 0), "{v}");
        per_channel.entry(ch).or_default().push((
            v["offset"].as_u64().expect("offset"),
            v["data"]["seq"].as_u64().expect("seq"),
        ));
    }
    assert_eq!(per_channel.len(), 2, "only chat channels: {per_channel:?}");
    for (ch, pubs) in &per_channel {
        let offsets: Vec<u64> = pubs.iter().map(|(o, _)| *o).collect();
        let expected: Vec<u64> = (1..=pubs.len() as u64).collect();
        assert_eq!(offsets, expected, "{ch}");
        let seqs: Vec<u64> = pubs.iter().map(|(_, s)| *s).collect();
        let mut sorted = seqs.clone();
        sorted.sort();
        assert_eq!(seqs, sorted, "{ch} publication order");
    }
    assert_eq!(per_channel["chat:b"].len(), 10);
    srv.join().await.expect("clean shutdown");
}
