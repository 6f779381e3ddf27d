//! The behaviour every broker must show; run by each backend's tests.
//!
//! Delivery may be asynchronous (a Redis broker hears its own publications back over
//! pub/sub), so checks of what reached the handler wait, bounded, for it; and a node
//! only receives channels it subscribed to, so each check subscribes first.

use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;

use super::{Broker, BrokerError, BrokerEventHandler, HistoryFilter, HistoryOptions};
use crate::protocol::messages::{ClientInfo, Publication, StreamPosition};

#[derive(Default)]
struct Recorder {
    pubs: Mutex<Vec<(String, u64, bytes::Bytes)>>,
    joins: Mutex<Vec<(String, String)>>,
}

impl BrokerEventHandler for Recorder {
    fn handle_publication(&self, channel: &str, p: Arc<Publication>, _epoch: &str) {
        self.pubs
            .lock()
            .push((channel.to_string(), p.offset, p.data.clone()));
    }
    fn handle_join(&self, channel: &str, info: ClientInfo) {
        self.joins.lock().push((channel.to_string(), info.client));
    }
    fn handle_leave(&self, _channel: &str, _info: ClientInfo) {}
}

fn data(i: u64) -> Publication {
    Publication {
        data: bytes::Bytes::from(format!("{{\"i\":{i}}}")),
        ..Default::default()
    }
}

/// Waits (up to 5 s) until `cond` holds; panics with `what` otherwise.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !cond() {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

const HIST: HistoryOptions = HistoryOptions {
    size: 5,
    ttl: Duration::from_secs(60),
};

pub async fn run_all<B: Broker, F: Fn() -> Arc<B>>(make: F) {
    offsets_increase_by_one_and_deliver_in_order(make()).await;
    no_history_means_no_offset(make()).await;
    history_filters(make()).await;
    unrecoverable_positions(make()).await;
    remove_history_keeps_position(make()).await;
    join_reaches_handler(make()).await;
}

fn attach<B: Broker>(b: &B) -> Arc<Recorder> {
    let r = Arc::new(Recorder::default());
    let dynr: Arc<dyn BrokerEventHandler> = r.clone();
    let weak: Weak<dyn BrokerEventHandler> = Arc::downgrade(&dynr);
    // `dynr` and `r` share one allocation, so the weak stays valid while `r` lives.
    b.set_handler(weak);
    r
}

async fn offsets_increase_by_one_and_deliver_in_order<B: Broker>(b: Arc<B>) {
    let r = attach(&*b);
    b.subscribe("c").await.unwrap();
    let mut epoch = String::new();
    for i in 1..=8u64 {
        let pos = b.publish("c", data(i), HIST).await.unwrap();
        assert_eq!(pos.offset, i);
        if epoch.is_empty() {
            epoch = pos.epoch.clone();
        }
        assert_eq!(pos.epoch, epoch, "epoch is stable");
    }
    eventually("8 deliveries", || r.pubs.lock().len() >= 8).await;
    let got: Vec<u64> = r.pubs.lock().iter().map(|(_, o, _)| *o).collect();
    assert_eq!(got, (1..=8).collect::<Vec<_>>());
}

async fn no_history_means_no_offset<B: Broker>(b: Arc<B>) {
    let r = attach(&*b);
    b.subscribe("n").await.unwrap();
    let pos = b
        .publish("n", data(1), HistoryOptions::default())
        .await
        .unwrap();
    assert_eq!(pos.offset, 0);
    eventually("the delivery", || r.pubs.lock().len() == 1).await;
    assert_eq!(r.pubs.lock()[0].1, 0);
    let (pubs, _) = b.history("n", HistoryFilter::default()).await.unwrap();
    assert!(pubs.is_empty());
}

async fn history_filters<B: Broker>(b: Arc<B>) {
    attach(&*b);
    let mut last = StreamPosition::default();
    for i in 1..=8u64 {
        last = b.publish("h", data(i), HIST).await.unwrap();
    }
    let offsets = |v: &[Publication]| v.iter().map(|p| p.offset).collect::<Vec<_>>();
    let (all, top) = b.history("h", HistoryFilter::default()).await.unwrap();
    assert_eq!(top, last);
    assert_eq!(offsets(&all), vec![4, 5, 6, 7, 8], "bounded by size");
    let (only_pos, _) = b
        .history(
            "h",
            HistoryFilter {
                limit: Some(0),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(only_pos.is_empty());
    let since = StreamPosition {
        offset: 5,
        epoch: last.epoch.clone(),
    };
    let (after, _) = b
        .history(
            "h",
            HistoryFilter {
                since: Some(since.clone()),
                limit: Some(2),
                reverse: false,
            },
        )
        .await
        .unwrap();
    assert_eq!(offsets(&after), vec![6, 7]);
    let (before, _) = b
        .history(
            "h",
            HistoryFilter {
                since: Some(since),
                limit: None,
                reverse: true,
            },
        )
        .await
        .unwrap();
    assert_eq!(offsets(&before), vec![4]);
    let (rev, _) = b
        .history(
            "h",
            HistoryFilter {
                since: None,
                limit: Some(2),
                reverse: true,
            },
        )
        .await
        .unwrap();
    assert_eq!(offsets(&rev), vec![8, 7]);
    let at_top = StreamPosition {
        offset: 8,
        epoch: last.epoch.clone(),
    };
    let (none, _) = b
        .history(
            "h",
            HistoryFilter {
                since: Some(at_top),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(none.is_empty(), "nothing after the top");
}

async fn unrecoverable_positions<B: Broker>(b: Arc<B>) {
    attach(&*b);
    let mut last = StreamPosition::default();
    for i in 1..=8u64 {
        last = b.publish("u", data(i), HIST).await.unwrap();
    }
    let too_old = StreamPosition {
        offset: 1,
        epoch: last.epoch.clone(),
    };
    assert!(matches!(
        b.history(
            "u",
            HistoryFilter {
                since: Some(too_old),
                ..Default::default()
            }
        )
        .await,
        Err(BrokerError::UnrecoverablePosition)
    ));
    let wrong_epoch = StreamPosition {
        offset: 7,
        epoch: "other".into(),
    };
    assert!(matches!(
        b.history(
            "u",
            HistoryFilter {
                since: Some(wrong_epoch),
                ..Default::default()
            }
        )
        .await,
        Err(BrokerError::UnrecoverablePosition)
    ));
    let just_kept = StreamPosition {
        offset: 3,
        epoch: last.epoch,
    };
    assert!(b
        .history(
            "u",
            HistoryFilter {
                since: Some(just_kept),
                ..Default::default()
            }
        )
        .await
        .is_ok());
}

async fn remove_history_keeps_position<B: Broker>(b: Arc<B>) {
    attach(&*b);
    b.publish("r", data(1), HIST).await.unwrap();
    let last = b.publish("r", data(2), HIST).await.unwrap();
    b.remove_history("r").await.unwrap();
    let (pubs, top) = b.history("r", HistoryFilter::default()).await.unwrap();
    assert!(pubs.is_empty());
    assert_eq!(top, last, "offsets continue after a history removal");
    assert_eq!(b.publish("r", data(3), HIST).await.unwrap().offset, 3);
}

async fn join_reaches_handler<B: Broker>(b: Arc<B>) {
    let r = attach(&*b);
    b.subscribe("j").await.unwrap();
    b.publish_join(
        "j",
        ClientInfo {
            client: "c1".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    eventually("the join", || !r.joins.lock().is_empty()).await;
    assert_eq!(
        r.joins.lock().as_slice(),
        &[("j".to_string(), "c1".to_string())]
    );
}
