//! Recovery: resubscribing from a stream position returns exactly what was missed.

use serde_json::json;

use crate::common::client::{cmd, data_json};
use crate::common::{tokens, Client, Server, Wire};
use herald::protocol::messages::SubscribeResult;

fn subscribe_result(r: herald::protocol::messages::Reply) -> SubscribeResult {
    r.subscribe.expect("subscribe result")
}

fn pubs(res: &SubscribeResult) -> Vec<(u64, serde_json::Value)> {
    res.publications
        .iter()
        .map(|p| (p.offset, data_json(p)))
        .collect()
}

pub async fn recover_missed_publications_after_unsubscribe(wire: Wire) {
    let srv = Server::start();
    let api = srv.api();
    let (mut c, _) = Client::connect(srv.addr, wire, &tokens::connect("alice")).await;
    let first = subscribe_result(c.ok(cmd::subscribe_recoverable("chat:rec")).await);
    assert!(first.recoverable, "{first:?}");
    assert!(!first.epoch.is_empty(), "{first:?}");
    assert_eq!(first.offset, 0);

    api.publish("chat:rec", json!({"n": 1})).await;
    let p = c.next_pub("chat:rec").await;
    assert_eq!(p.offset, 1);
    c.ok(cmd::unsubscribe("chat:rec")).await;

    for n in 2..=4 {
        api.publish("chat:rec", json!({"n": n})).await;
    }
    let res = subscribe_result(
        c.ok(cmd::subscribe_recover("chat:rec", 1, &first.epoch))
            .await,
    );
    assert!(res.recovered, "{res:?}");
    assert_eq!(res.epoch, first.epoch);
    assert_eq!(res.offset, 4);
    assert_eq!(
        pubs(&res),
        vec![
            (2, json!({"n": 2})),
            (3, json!({"n": 3})),
            (4, json!({"n": 4}))
        ]
    );

    // Live publications continue right after the recovered ones, without duplicates.
    api.publish("chat:rec", json!({"n": 5})).await;
    let p = c.next_pub("chat:rec").await;
    assert_eq!((p.offset, data_json(&p)), (5, json!({"n": 5})));
}

pub async fn recover_missed_publications_after_reconnect(wire: Wire) {
    let srv = Server::start();
    let api = srv.api();
    let (mut c, _) = Client::connect(srv.addr, wire, &tokens::connect("alice")).await;
    let first = subscribe_result(c.ok(cmd::subscribe_recoverable("chat:rc")).await);
    for n in 1..=2 {
        api.publish("chat:rc", json!({"n": n})).await;
    }
    assert_eq!(c.next_pub("chat:rc").await.offset, 1);
    assert_eq!(c.next_pub("chat:rc").await.offset, 2);
    drop(c);

    for n in 3..=5 {
        api.publish("chat:rc", json!({"n": n})).await;
    }
    let (mut c, _) = Client::connect(srv.addr, wire, &tokens::connect("alice")).await;
    let res = subscribe_result(
        c.ok(cmd::subscribe_recover("chat:rc", 2, &first.epoch))
            .await,
    );
    assert!(res.recovered, "{res:?}");
    assert_eq!(
        res.publications
            .iter()
            .map(|p| p.offset)
            .collect::<Vec<_>>(),
        vec![3, 4, 5]
    );
    assert_eq!(res.offset, 5);

    // Recovering from the top: nothing missed, still recovered.
    c.ok(cmd::unsubscribe("chat:rc")).await;
    let res = subscribe_result(
        c.ok(cmd::subscribe_recover("chat:rc", 5, &first.epoch))
            .await,
    );
    assert!(res.recovered, "{res:?}");
    assert!(res.publications.is_empty(), "{res:?}");
}

pub async fn position_older_than_history_is_not_recovered(wire: Wire) {
    let srv = Server::start();
    let api = srv.api();
    let (mut c, _) = Client::connect(srv.addr, wire, &tokens::connect("alice")).await;
    // `small:` keeps 3 publications.
    let first = subscribe_result(c.ok(cmd::subscribe_recoverable("small:r")).await);
    c.ok(cmd::unsubscribe("small:r")).await;
    for n in 1..=10 {
        api.publish("small:r", json!({"n": n})).await;
    }
    let res = subscribe_result(
        c.ok(cmd::subscribe_recover("small:r", 1, &first.epoch))
            .await,
    );
    assert!(!res.recovered, "offsets 2..=7 are gone: {res:?}");
    assert!(res.was_recovering, "{res:?}");
    assert_eq!(res.offset, 10, "{res:?}");
    assert_eq!(res.epoch, first.epoch);

    // From a position still covered by the history, recovery works.
    c.ok(cmd::unsubscribe("small:r")).await;
    let res = subscribe_result(
        c.ok(cmd::subscribe_recover("small:r", 7, &first.epoch))
            .await,
    );
    assert!(res.recovered, "{res:?}");
    assert_eq!(
        res.publications
            .iter()
            .map(|p| p.offset)
            .collect::<Vec<_>>(),
        vec![8, 9, 10]
    );
}

pub async fn wrong_epoch_is_not_recovered(wire: Wire) {
    let srv = Server::start();
    let api = srv.api();
    api.publish("chat:ep", json!({"n": 1})).await;
    let (mut c, _) = Client::connect(srv.addr, wire, &tokens::connect("alice")).await;
    let res = subscribe_result(c.ok(cmd::subscribe_recover("chat:ep", 0, "deadbeef")).await);
    assert!(!res.recovered, "{res:?}");
    assert_eq!(res.offset, 1);
    assert_ne!(res.epoch, "deadbeef");
    // Still subscribed from the current position.
    api.publish("chat:ep", json!({"n": 2})).await;
    assert_eq!(c.next_pub("chat:ep").await.offset, 2);
}

pub async fn positioned_subscription_reports_position(wire: Wire) {
    let srv = Server::start();
    let api = srv.api();
    api.publish("chat:pos", json!({"n": 1})).await;
    api.publish("chat:pos", json!({"n": 2})).await;
    let (mut c, _) = Client::connect(srv.addr, wire, &tokens::connect("alice")).await;
    let res = subscribe_result(
        c.ok(cmd::subscribe_with(
            herald::protocol::messages::SubscribeRequest {
                channel: "chat:pos".into(),
                positioned: true,
                ..Default::default()
            },
        ))
        .await,
    );
    assert!(res.positioned, "{res:?}");
    assert_eq!(res.offset, 2, "{res:?}");
    assert!(!res.epoch.is_empty(), "{res:?}");
    assert!(res.publications.is_empty(), "no recovery asked: {res:?}");
    api.publish("chat:pos", json!({"n": 3})).await;
    assert_eq!(c.next_pub("chat:pos").await.offset, 3);
}
