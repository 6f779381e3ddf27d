//! The client protocol over Protobuf binary frames: every scenario, plus framing details.

mod common;
mod scenarios;

use common::client::{cmd, Client, Wire};
use common::{tokens, within, Server};
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

all_scenarios!(Wire::Protobuf);

#[tokio::test]
async fn format_query_parameter_selects_protobuf() {
    let srv = Server::start();
    let (mut c, proto) = Client::open_query(srv.addr, "format=protobuf", Wire::Protobuf).await;
    assert_eq!(proto, None, "no subprotocol was offered, none is echoed");
    let res = c
        .connect_with(cmd::connect(&tokens::connect("alice")))
        .await;
    assert!(!res.client.is_empty());
    c.ok(cmd::subscribe("chat:q")).await;
    srv.api()
        .publish("chat:q", serde_json::json!({"via": "query"}))
        .await;
    assert_eq!(c.next_pub("chat:q").await.offset, 1);
}

#[tokio::test]
async fn server_ping_is_a_single_zero_byte() {
    let srv = Server::start_with(&[
        ("HERALD_CLIENT__PING_INTERVAL", "1s"),
        ("HERALD_CLIENT__PONG_TIMEOUT", "500ms"),
    ]);
    let (mut c, _) = Client::connect(srv.addr, Wire::Protobuf, &tokens::connect("alice")).await;
    for _ in 0..2 {
        let frame = loop {
            match within("a binary frame", c.ws.next()).await {
                Some(Ok(Message::Binary(b))) => break b,
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("expected a binary frame, got {other:?}"),
            }
        };
        assert_eq!(&frame[..], &[0u8], "an empty length-delimited reply");
        // The pong: an empty command, also one zero byte.
        c.send_message(Message::binary(vec![0u8])).await;
    }
    c.roundtrip().await;
}

#[tokio::test]
async fn binary_data_round_trips_unchanged() {
    let srv = Server::start();
    let (mut c, _) = Client::connect(srv.addr, Wire::Protobuf, &tokens::connect("alice")).await;
    c.ok(cmd::subscribe("open:bin")).await;
    let data = bytes::Bytes::from_static(&[0, 159, 146, 150, 255, 10]);
    let mut publish = cmd::publish("open:bin", &serde_json::Value::Null);
    publish.publish.as_mut().unwrap().data = data.clone();
    c.ok(publish).await;
    let p = c.next_pub("open:bin").await;
    assert_eq!(p.data, data, "protobuf carries bytes verbatim");
}

#[tokio::test]
async fn cf_protocol_query_parameter_selects_protobuf() {
    let srv = Server::start();
    let (mut c, _) = Client::open_query(srv.addr, "cf_protocol=protobuf", Wire::Protobuf).await;
    c.connect_with(cmd::connect(&tokens::connect("alice")))
        .await;
    c.roundtrip().await;
}

/// Bytes that are not JSON reach JSON subscribers as a JSON string (docs/PROTOCOL.md).
#[tokio::test]
async fn non_json_payload_reaches_json_subscriber_as_string() {
    let srv = Server::start();
    let (mut publ, _) = Client::connect(srv.addr, Wire::Protobuf, &tokens::connect("alice")).await;
    let (mut sub, _) = Client::connect(srv.addr, Wire::Json, &tokens::connect("bob")).await;
    sub.ok(cmd::subscribe("open:text")).await;
    let mut publish = cmd::publish("open:text", &serde_json::Value::Null);
    publish.publish.as_mut().unwrap().data = bytes::Bytes::from_static(b"plain text, not json");
    publ.ok(publish).await;
    let p = sub.next_pub("open:text").await;
    assert_eq!(
        common::client::data_json(&p),
        serde_json::json!("plain text, not json")
    );

    // Not even UTF-8: the JSON connection still gets a valid text frame.
    let mut publish = cmd::publish("open:text", &serde_json::Value::Null);
    publish.publish.as_mut().unwrap().data = bytes::Bytes::from_static(&[0xff, 0xfe, b'a']);
    publ.ok(publish).await;
    let p = sub.next_pub("open:text").await;
    assert_eq!(
        common::client::data_json(&p),
        serde_json::json!("\u{fffd}\u{fffd}a")
    );
    sub.roundtrip().await;
}

/// A server-side subscription without position has an all-default result; its map
/// entry must still carry the value field (`12 00`), or protobufjs decodes `null`.
#[tokio::test]
async fn default_server_side_subscription_result_is_written_out() {
    use prost::Message as _;
    let srv = Server::start();
    let mut c = Client::open(srv.addr, Wire::Protobuf).await;
    let mut connect = cmd::connect(&tokens::connect_with_channels("alice", &["news"]));
    connect.id = 1;
    c.send(&connect).await;
    let frame = loop {
        match within("the connect reply", c.ws.next()).await {
            Some(Ok(Message::Binary(b))) => break b,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected a binary frame, got {other:?}"),
        }
    };
    let reply =
        herald::protocol::messages::Reply::decode_length_delimited(&frame[..]).expect("one reply");
    assert!(reply.connect.is_some(), "{reply:?}");
    // Map entry: key (0a 04 "news") then an empty SubscribeResult value (12 00).
    let entry = [0x0a, 0x04, b'n', b'e', b'w', b's', 0x12, 0x00];
    assert!(
        frame.windows(entry.len()).any(|w| w == entry),
        "no explicit value for news in {:02x?}",
        &frame[..]
    );
}
