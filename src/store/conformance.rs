//! The behaviour every store must show; run by each backend's tests (SQLite always,
//! ScyllaDB when a server is available).

use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;

use super::{Append, ConversationStore, MessageStore, Retention, StoreError};
use crate::broker::{BrokerEventHandler, HistoryFilter};
use crate::protocol::messages::{ClientInfo, Publication, StreamPosition};

#[derive(Default)]
struct Recorder(Mutex<Vec<(String, u64)>>);

impl BrokerEventHandler for Recorder {
    fn handle_publication(&self, channel: &str, p: Arc<Publication>, _epoch: &str) {
        self.0.lock().push((channel.to_string(), p.offset));
    }
    fn handle_join(&self, _: &str, _: ClientInfo) {}
    fn handle_leave(&self, _: &str, _: ClientInfo) {}
}

fn append(channel: &str, i: u64, user: &str) -> Append {
    Append {
        channel: channel.into(),
        publication: Publication {
            data: Bytes::from(format!("{{\"i\":{i}}}")),
            info: Some(ClientInfo {
                user: user.into(),
                client: "c".into(),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn offsets(v: &[Publication]) -> Vec<u64> {
    v.iter().map(|p| p.offset).collect()
}

pub async fn run_all<S: MessageStore + ConversationStore + Clone>(s: S) {
    let rec = Arc::new(Recorder::default());
    let dynr: Arc<dyn BrokerEventHandler> = rec.clone();
    let weak: Weak<dyn BrokerEventHandler> = Arc::downgrade(&dynr);
    s.set_handler(weak);

    sequential_offsets_and_ordered_delivery(&s, &rec).await;
    concurrent_appends_are_gap_free(&s, &rec).await;
    history_pages(&s).await;
    unrecoverable(&s).await;
    idempotency(&s).await;
    retention_by_count(&s).await;
    members_and_read_markers(&s).await;
    user_data_removal(&s).await;
    append_at_keeps_the_sequencers_offsets(&s, &rec).await;
    append_at_retention_by_count(&s).await;
}

async fn sequential_offsets_and_ordered_delivery<S: MessageStore>(s: &S, rec: &Recorder) {
    let mut epoch = String::new();
    for i in 1..=5 {
        let a = s.append(append("seq", i, "u")).await.unwrap();
        assert_eq!(a.position.offset, i);
        assert!(!a.duplicate);
        if epoch.is_empty() {
            epoch = a.position.epoch.clone();
        }
        assert_eq!(a.position.epoch, epoch);
    }
    let delivered: Vec<u64> = rec
        .0
        .lock()
        .iter()
        .filter(|(c, _)| c == "seq")
        .map(|(_, o)| *o)
        .collect();
    assert_eq!(delivered, vec![1, 2, 3, 4, 5]);
}

async fn concurrent_appends_are_gap_free<S: MessageStore + Clone>(s: &S, rec: &Recorder) {
    let mut tasks = Vec::new();
    for i in 0..200u64 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            s.append(append(&format!("conc{}", i % 4), i, "u")).await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    for ch in 0..4 {
        let name = format!("conc{ch}");
        let delivered: Vec<u64> = rec
            .0
            .lock()
            .iter()
            .filter(|(c, _)| *c == name)
            .map(|(_, o)| *o)
            .collect();
        assert_eq!(
            delivered,
            (1..=50).collect::<Vec<_>>(),
            "{name} delivered in offset order"
        );
        let (pubs, top) = s.history(&name, HistoryFilter::default()).await.unwrap();
        assert_eq!(offsets(&pubs), (1..=50).collect::<Vec<_>>());
        assert_eq!(top.offset, 50);
    }
}

async fn history_pages<S: MessageStore>(s: &S) {
    let mut last = StreamPosition::default();
    for i in 1..=10 {
        last = s.append(append("pages", i, "u")).await.unwrap().position;
    }
    let f = |since: Option<u64>, limit: Option<usize>, reverse: bool| HistoryFilter {
        since: since.map(|o| StreamPosition {
            offset: o,
            epoch: last.epoch.clone(),
        }),
        limit,
        reverse,
    };
    let (p, top) = s.history("pages", f(None, Some(3), false)).await.unwrap();
    assert_eq!((offsets(&p), top.offset), (vec![1, 2, 3], 10));
    assert_eq!(&p[0].data[..], b"{\"i\":1}");
    assert_eq!(p[0].info.as_ref().map(|i| i.user.as_str()), Some("u"));
    let (p, _) = s
        .history("pages", f(Some(3), Some(3), false))
        .await
        .unwrap();
    assert_eq!(offsets(&p), vec![4, 5, 6]);
    let (p, _) = s.history("pages", f(None, Some(2), true)).await.unwrap();
    assert_eq!(offsets(&p), vec![10, 9]);
    let (p, _) = s
        .history("pages", f(Some(4), Some(10), true))
        .await
        .unwrap();
    assert_eq!(offsets(&p), vec![3, 2, 1]);
    let (p, top) = s.history("pages", f(None, Some(0), false)).await.unwrap();
    assert!(p.is_empty());
    assert_eq!(top, last);
    let (p, _) = s.history("pages", f(Some(10), None, false)).await.unwrap();
    assert!(p.is_empty());
    let (p, top) = s
        .history("never-written", HistoryFilter::default())
        .await
        .unwrap();
    assert!(p.is_empty());
    assert_eq!(top.offset, 0);
    assert!(
        !top.epoch.is_empty(),
        "an empty channel already has its epoch"
    );
}

async fn unrecoverable<S: MessageStore>(s: &S) {
    let mut last = StreamPosition::default();
    for i in 1..=4 {
        last = s.append(append("gone", i, "u")).await.unwrap().position;
    }
    let wrong_epoch = HistoryFilter {
        since: Some(StreamPosition {
            offset: 1,
            epoch: "x".into(),
        }),
        ..Default::default()
    };
    assert!(matches!(
        s.history("gone", wrong_epoch).await,
        Err(StoreError::UnrecoverablePosition)
    ));
    s.remove_history("gone").await.unwrap();
    let since = HistoryFilter {
        since: Some(StreamPosition {
            offset: 2,
            epoch: last.epoch.clone(),
        }),
        ..Default::default()
    };
    assert!(matches!(
        s.history("gone", since).await,
        Err(StoreError::UnrecoverablePosition)
    ));
    let next = s.append(append("gone", 5, "u")).await.unwrap().position;
    assert_eq!(next.offset, 5, "offsets continue after history removal");
    assert_eq!(next.epoch, last.epoch);
}

async fn idempotency<S: MessageStore>(s: &S) {
    let mut a = append("idem", 1, "u");
    a.idempotency_key = Some("k1".into());
    let first = s.append(a.clone()).await.unwrap();
    let again = s.append(a).await.unwrap();
    assert!(again.duplicate);
    assert_eq!(again.position, first.position);
    let (p, _) = s.history("idem", HistoryFilter::default()).await.unwrap();
    assert_eq!(p.len(), 1, "the retry was not stored twice");
}

async fn retention_by_count<S: MessageStore>(s: &S) {
    for i in 1..=10 {
        let mut a = append("bounded", i, "u");
        a.retention = Retention {
            max_age: Duration::ZERO,
            max_count: 3,
        };
        s.append(a).await.unwrap();
    }
    let (p, top) = s
        .history("bounded", HistoryFilter::default())
        .await
        .unwrap();
    assert_eq!((offsets(&p), top.offset), (vec![8, 9, 10], 10));
}

async fn members_and_read_markers<S: MessageStore + ConversationStore>(s: &S) {
    let users = vec!["alice".to_string(), "bob".to_string()];
    s.add_members("chat:team", &users).await.unwrap();
    s.add_members("chat:team", &users).await.unwrap();
    assert_eq!(s.members("chat:team").await.unwrap(), users);
    assert!(s.is_member("chat:team", "bob").await.unwrap());
    assert!(!s.is_member("chat:team", "carol").await.unwrap());
    for i in 1..=4 {
        s.append(append("chat:team", i, "alice")).await.unwrap();
    }
    assert_eq!(s.set_read("bob", "chat:team", 3).await.unwrap(), 3);
    assert_eq!(
        s.set_read("bob", "chat:team", 1).await.unwrap(),
        3,
        "markers never move back"
    );
    assert_eq!(
        s.set_read("bob", "chat:team", 99).await.unwrap(),
        4,
        "clamped to the top"
    );
    s.set_read("bob", "chat:team", 3).await.unwrap();
    s.append(append("chat:dm#alice,bob", 1, "alice"))
        .await
        .unwrap();
    let dms = s.dm_channels("bob", "chat:").await.unwrap();
    assert_eq!(dms, vec!["chat:dm#alice,bob".to_string()]);
    let convs = s.conversations("bob", &dms).await.unwrap();
    let team = convs.iter().find(|c| c.channel == "chat:team").unwrap();
    assert_eq!((team.top, team.read_offset, team.unread), (4, 4, 0));
    let dm = convs
        .iter()
        .find(|c| c.channel == "chat:dm#alice,bob")
        .unwrap();
    assert_eq!(
        (dm.unread, dm.last.as_ref().map(|p| p.offset)),
        (1, Some(1))
    );
    s.remove_members("chat:team", &["bob".to_string()])
        .await
        .unwrap();
    assert!(!s.is_member("chat:team", "bob").await.unwrap());
}

async fn user_data_removal<S: MessageStore + ConversationStore>(s: &S) {
    s.add_members("chat:gdpr", &["mallory".to_string()])
        .await
        .unwrap();
    s.append(append("chat:gdpr", 1, "mallory")).await.unwrap();
    s.append(append("chat:gdpr", 2, "trent")).await.unwrap();
    s.set_read("mallory", "chat:gdpr", 2).await.unwrap();
    assert_eq!(s.remove_user_data("mallory", true).await.unwrap(), 1);
    assert!(s.members("chat:gdpr").await.unwrap().is_empty());
    let (p, _) = s
        .history("chat:gdpr", HistoryFilter::default())
        .await
        .unwrap();
    assert_eq!(&p[0].data[..], br#"{"deleted":true}"#);
    assert_eq!(p[0].offset, 1, "a tombstone keeps its offset");
    assert_eq!(&p[1].data[..], b"{\"i\":2}");
}

fn sequenced(offset: u64, text: &str, user: &str) -> Publication {
    Publication {
        data: Bytes::from(text.to_string()),
        info: Some(ClientInfo {
            user: user.into(),
            ..Default::default()
        }),
        offset,
        ..Default::default()
    }
}

fn texts(v: &[Publication]) -> Vec<(u64, String)> {
    v.iter()
        .map(|p| (p.offset, String::from_utf8_lossy(&p.data).into_owned()))
        .collect()
}

/// Cluster mode: writes at the offsets Redis assigned, in any order, repeated by the
/// reconciler. The first write at an offset stays (a tombstone included), `top` only
/// moves forward, nothing is delivered.
async fn append_at_keeps_the_sequencers_offsets<S: MessageStore + ConversationStore>(
    s: &S,
    rec: &Recorder,
) {
    let ch = "chat:sequenced";
    // The node seeds Redis from the store's position, so the epoch is the store's.
    let only_top = HistoryFilter {
        limit: Some(0),
        ..Default::default()
    };
    let (_, seeded) = s.history(ch, only_top.clone()).await.unwrap();
    let epoch = seeded.epoch.clone();
    let r = Retention::default();
    s.append_at(ch, &epoch, sequenced(2, "b", "u"), r)
        .await
        .unwrap();
    // Offset 1 still in flight: a forward read from the start is told the position is
    // gone only if the message right after it is missing.
    let since = |o: u64| HistoryFilter {
        since: Some(StreamPosition {
            offset: o,
            epoch: epoch.clone(),
        }),
        ..Default::default()
    };
    let (p, top) = s.history(ch, since(1)).await.unwrap();
    assert_eq!((texts(&p), top.offset), (vec![(2, "b".into())], 2));
    s.append_at(ch, &epoch, sequenced(1, "a", "u"), r)
        .await
        .unwrap();
    s.append_at(ch, &epoch, sequenced(2, "other", "u"), r)
        .await
        .unwrap();
    s.append_at(ch, &epoch, sequenced(4, "d", "zoe"), r)
        .await
        .unwrap();
    // A hole (3, another node still writing it) is returned as is; recovery fills it
    // from the broker's stream.
    let (p, top) = s.history(ch, since(0)).await.unwrap();
    assert_eq!(
        (texts(&p), top.clone()),
        (
            vec![(1, "a".into()), (2, "b".into()), (4, "d".into())],
            StreamPosition {
                offset: 4,
                epoch: epoch.clone()
            }
        )
    );
    s.append_at(ch, &epoch, sequenced(3, "c", "u"), r)
        .await
        .unwrap();
    let (_, top) = s.history(ch, only_top.clone()).await.unwrap();
    assert_eq!(top.offset, 4, "top never moves back");
    // A reconciler re-writing a message after user_data_remove must not undo it.
    assert_eq!(s.remove_user_data("zoe", true).await.unwrap(), 1);
    s.append_at(ch, &epoch, sequenced(4, "d", "zoe"), r)
        .await
        .unwrap();
    let (p, _) = s.history(ch, since(0)).await.unwrap();
    assert_eq!(
        texts(&p),
        vec![
            (1, "a".into()),
            (2, "b".into()),
            (3, "c".into()),
            (4, r#"{"deleted":true}"#.into())
        ]
    );
    assert!(
        !rec.0.lock().iter().any(|(c, _)| c == ch),
        "append_at delivers nothing (the broker did)"
    );
    // The row's author counts for the DM index as for appends.
    let dm = "chat:dm#carol,dave";
    let (_, dm_top) = s.history(dm, only_top).await.unwrap();
    s.append_at(dm, &dm_top.epoch, sequenced(1, "hi", "carol"), r)
        .await
        .unwrap();
    assert_eq!(
        s.dm_channels("dave", "chat:").await.unwrap(),
        vec![dm.to_string()]
    );
    // A channel the store has never seen takes the sequencer's epoch.
    s.append_at("fresh", "e-redis", sequenced(7, "x", "u"), r)
        .await
        .unwrap();
    let (p, top) = s.history("fresh", HistoryFilter::default()).await.unwrap();
    assert_eq!(
        (texts(&p), top),
        (
            vec![(7, "x".into())],
            StreamPosition {
                offset: 7,
                epoch: "e-redis".into()
            }
        )
    );
}

/// `history_max_count` in cluster mode: the newest `max_count` offsets stay, and a late
/// write below them (a reconciler) does not bring an old message back.
async fn append_at_retention_by_count<S: MessageStore>(s: &S) {
    let ch = "bounded-sequenced";
    let r = Retention {
        max_age: Duration::ZERO,
        max_count: 3,
    };
    for o in [1, 2, 3, 5, 4, 6] {
        s.append_at(ch, "e", sequenced(o, &o.to_string(), "u"), r)
            .await
            .unwrap();
    }
    s.append_at(ch, "e", sequenced(2, "2", "u"), r)
        .await
        .unwrap();
    let (p, top) = s.history(ch, HistoryFilter::default()).await.unwrap();
    assert_eq!((offsets(&p), top.offset), (vec![4, 5, 6], 6));
}
