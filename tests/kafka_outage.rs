//! Kafka ingest through failures, against librdkafka's mock cluster: brokers down and
//! up, a node stopped while brokers are down (records replayed, de-duplicated by the
//! store), a rebalance and a graceful shutdown (both commit what was applied).

mod common;
mod kafka_support;

use common::Server;
use kafka_support::{ingest_state, wait_ingest_ok, wait_ready, Mock, TempDir, Watcher, FAST_GROUP};
use serde_json::{json, Value};

/// `room` is persisted: replays are recognised by their idempotency key. `live` is
/// not: a replay would be delivered a second time, which the tests would see.
fn toml(commit_interval: &str) -> String {
    format!(
        r#"
[http]
workers = 2
shutdown_timeout = "3s"

[kafka]
ingest_enabled = true
commit_interval = "{commit_interval}"
{FAST_GROUP}

[[namespaces]]
name = "room"
persist = true

[[namespaces]]
name = "live"
"#
    )
}

fn start(mock: &Mock, topic: &str, group: &str, commit_interval: &str, dir: &TempDir) -> Server {
    Server::start_config(
        &toml(commit_interval),
        &[
            ("HERALD_KAFKA__BROKERS", &mock.bootstrap()),
            ("HERALD_KAFKA__TOPICS", topic),
            ("HERALD_KAFKA__GROUP_ID", group),
            ("HERALD_STORE__PATH", dir.path()),
        ],
    )
}

async fn history_seqs(srv: &Server, channel: &str) -> Vec<u64> {
    let h = srv
        .api()
        .ok("history", json!({"channel": channel, "limit": 1000}))
        .await;
    h["publications"]
        .as_array()
        .expect("publications")
        .iter()
        .map(|p| p["data"]["seq"].as_u64().expect("seq"))
        .collect()
}

fn seqs_only(v: Vec<(String, u64)>) -> Vec<u64> {
    v.into_iter().map(|(_, s)| s).collect()
}

/// All brokers go down: `/ready` reports the degraded dependency (and stays 200),
/// WebSockets keep working, and once the brokers are back every record arrives in
/// order, none lost, none twice.
#[tokio::test]
async fn broker_outage_loses_nothing_and_ready_reports_it() {
    let mock = Mock::new(3);
    mock.topic("events", 1);
    let dir = TempDir::new();
    let srv = start(&mock, "events", "outage", "200ms", &dir);
    let mut w = Watcher::subscribe(srv.addr, "dave", &["room:o", "live:ping"]).await;
    wait_ingest_ok(srv.addr).await;
    for seq in 0..5 {
        mock.publish("events", 0, "room:o", seq).await;
    }
    assert_eq!(seqs_only(w.seqs(5).await), vec![0, 1, 2, 3, 4]);

    mock.cluster.broker_down(-1).expect("brokers down");
    let body = wait_ready(srv.addr, "kafka.ingest degraded", |b| {
        b["degraded"] == json!(["kafka.ingest"])
    })
    .await;
    assert_eq!(body["status"], "ready", "{body}");
    assert!(body["kafka"]["ingest"]["reason"].is_string(), "{body}");
    let status = reqwest::get(format!("http://{}/ready", srv.addr))
        .await
        .expect("ready")
        .status();
    assert_eq!(status, 200, "a degraded Kafka keeps the node ready");
    // Realtime delivery does not depend on Kafka.
    srv.api().publish("live:ping", json!({"seq": 100})).await;
    assert_eq!(w.seqs(1).await, vec![("live:ping".to_string(), 100)]);

    // Produced during the outage: the producer holds them until the brokers return.
    let produce = async {
        for seq in 5..10 {
            mock.publish("events", 0, "room:o", seq).await;
        }
    };
    let up = async {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        mock.cluster.broker_up(-1).expect("brokers up");
    };
    tokio::join!(produce, up);
    assert_eq!(seqs_only(w.seqs(5).await), vec![5, 6, 7, 8, 9]);
    wait_ready(srv.addr, "kafka ingest ok again", |b: &Value| {
        ingest_state(b) == "ok" && b.get("degraded").is_none()
    })
    .await;
    assert_eq!(
        history_seqs(&srv, "room:o").await,
        (0..10).collect::<Vec<_>>()
    );
    w.assert_no_more().await;
}

/// A node stops while the brokers are down, so what it applied is not committed. The
/// next node applies those records again: the store recognises them (each record's
/// idempotency key names its topic, partition and offset) and nothing is stored or
/// delivered twice.
#[tokio::test]
async fn replayed_records_are_deduplicated() {
    let mock = Mock::new(2);
    mock.topic("replay", 1);
    let dir = TempDir::new();
    // No periodic commit: only a rebalance or shutdown would commit.
    let a = start(&mock, "replay", "replay", "1h", &dir);
    let mut wa = Watcher::subscribe(a.addr, "erin", &["room:r"]).await;
    wait_ingest_ok(a.addr).await;
    for seq in 0..6 {
        mock.publish("replay", 0, "room:r", seq).await;
    }
    assert_eq!(seqs_only(wa.seqs(6).await), (0..6).collect::<Vec<_>>());
    mock.cluster.broker_down(-1).expect("brokers down");
    wait_ready(a.addr, "kafka.ingest degraded", |b| {
        b["degraded"] == json!(["kafka.ingest"])
    })
    .await;
    drop(wa);
    a.join().await.expect("node a stops despite the outage");
    mock.cluster.broker_up(-1).expect("brokers up");

    for seq in 6..9 {
        mock.publish("replay", 0, "room:r", seq).await;
    }
    let b = start(&mock, "replay", "replay", "1h", &dir);
    let mut wb = Watcher::subscribe(b.addr, "erin", &["room:r"]).await;
    assert_eq!(seqs_only(wb.seqs(3).await), vec![6, 7, 8]);
    assert_eq!(history_seqs(&b, "room:r").await, (0..9).collect::<Vec<_>>());
    wb.assert_no_more().await;
}

/// A second node joins the group: the partitions are shared out, and the node taking
/// one over starts after the offsets the first node committed. `live` is not
/// persisted, so a replay would show as a second delivery.
///
/// (The first node also commits when its partitions are revoked; librdkafka's mock
/// cluster refuses commits while the group rebalances, unlike Kafka, so here the
/// periodic commit is what the new owner starts from.)
#[tokio::test]
async fn rebalance_hands_partitions_over_at_the_committed_offsets() {
    let mock = Mock::new(3);
    mock.topic("moves", 2);
    let dir_a = TempDir::new();
    let dir_b = TempDir::new();
    let a = start(&mock, "moves", "moves", "200ms", &dir_a);
    let mut wa = Watcher::subscribe(a.addr, "finn", &["live:p0", "live:p1"]).await;
    wait_ingest_ok(a.addr).await;
    for seq in 0..5 {
        mock.publish("moves", 0, "live:p0", seq).await;
        mock.publish("moves", 1, "live:p1", seq).await;
    }
    let mut seen = wa.seqs(10).await;
    mock.wait_committed("moves", "moves", &[5, 5]).await;

    let b = start(&mock, "moves", "moves", "200ms", &dir_b);
    let mut wb = Watcher::subscribe(b.addr, "finn", &["live:p0", "live:p1"]).await;
    wait_ingest_ok(b.addr).await;
    for seq in 5..10 {
        mock.publish("moves", 0, "live:p0", seq).await;
        mock.publish("moves", 1, "live:p1", seq).await;
    }
    // Each later record is applied once, by whichever node owns its partition now.
    let mut later = Vec::new();
    while later.len() < 10 {
        tokio::select! {
            (ch, p) = wa.next() => later.push((ch, p)),
            (ch, p) = wb.next() => later.push((ch, p)),
        }
    }
    for (ch, p) in later {
        let v: Value = serde_json::from_slice(&p.data).expect("json");
        seen.push((ch, v["seq"].as_u64().expect("seq")));
    }
    wa.assert_no_more().await;
    wb.assert_no_more().await;
    for ch in ["live:p0", "live:p1"] {
        let mut got: Vec<u64> = seen
            .iter()
            .filter(|(c, _)| c == ch)
            .map(|(_, s)| *s)
            .collect();
        got.sort();
        assert_eq!(got, (0..10).collect::<Vec<_>>(), "{ch}: each record once");
    }
}

/// A graceful shutdown stops ingest before the clients are drained and commits what it
/// applied (here the only commit: no periodic one within the test), so the next node
/// starts after it.
#[tokio::test]
async fn graceful_shutdown_commits_what_was_applied() {
    let mock = Mock::new(1);
    mock.topic("handover", 1);
    let dir = TempDir::new();
    let a = start(&mock, "handover", "handover", "1h", &dir);
    let mut wa = Watcher::subscribe(a.addr, "gina", &["live:h"]).await;
    wait_ingest_ok(a.addr).await;
    for seq in 0..5 {
        mock.publish("handover", 0, "live:h", seq).await;
    }
    assert_eq!(seqs_only(wa.seqs(5).await), (0..5).collect::<Vec<_>>());
    drop(wa);
    a.join().await.expect("node a stops");
    mock.wait_committed("handover", "handover", &[5]).await;

    let b = start(&mock, "handover", "handover", "1h", &dir);
    let mut wb = Watcher::subscribe(b.addr, "gina", &["live:h"]).await;
    for seq in 5..8 {
        mock.publish("handover", 0, "live:h", seq).await;
    }
    assert_eq!(seqs_only(wb.seqs(3).await), vec![5, 6, 7]);
    wb.assert_no_more().await;
}
