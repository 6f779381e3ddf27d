//! A client that stops reading is disconnected with 3008 "slow" and never holds up
//! the other subscribers of the same channel, who get every publication in order.

mod common;

use common::client::cmd;
use common::{tokens, Client, Server, Wire};
use serde_json::json;

const PUBLICATIONS: u64 = 400;

#[tokio::test]
async fn slow_reader_is_cut_off_and_fast_reader_gets_everything() {
    let srv = Server::start_with(&[
        ("HERALD_CLIENT__OUTBOUND_QUEUE_LEN", "64"),
        ("HERALD_CLIENT__WRITE_TIMEOUT", "1s"),
        ("HERALD_CLIENT__MAX_FRAME_BYTES", "1048576"),
    ]);
    let channel = "chat:firehose";
    let (mut slow, _) = Client::connect(srv.addr, Wire::Json, &tokens::connect("slow")).await;
    slow.ok(cmd::subscribe(channel)).await;
    let (mut fast, _) = Client::connect(srv.addr, Wire::Json, &tokens::connect("fast")).await;
    fast.ok(cmd::subscribe(channel)).await;

    // The fast client reads everything concurrently; the slow one reads nothing until
    // the publishing is over.
    let reader = tokio::spawn(async move {
        let mut offsets = Vec::new();
        while (offsets.len() as u64) < PUBLICATIONS {
            offsets.push(fast.next_pub(channel).await.offset);
        }
        (fast, offsets)
    });

    // 400 x 60 KB = 24 MB: far more than loopback socket buffers hold for one client.
    let filler = "x".repeat(60_000);
    let api = srv.api();
    for i in 0..PUBLICATIONS {
        api.publish(channel, json!({"i": i, "pad": filler})).await;
    }

    let (mut fast, offsets) = reader.await.expect("fast reader");
    assert_eq!(
        offsets,
        (1..=PUBLICATIONS).collect::<Vec<_>>(),
        "fast reader got every publication in order"
    );
    fast.roundtrip().await;

    let close = slow.expect_close().await;
    assert_eq!(
        (close.code, close.reason.as_str()),
        (3008, "slow"),
        "{close:?}"
    );
}
