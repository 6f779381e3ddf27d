//! The client protocol over JSON text frames: every scenario, plus the exact wire shape.

mod common;
mod scenarios;

use common::client::{cmd, Client, Wire};
use common::{tokens, within, Server};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

all_scenarios!(Wire::Json);

/// Sends `text` as one frame and returns the JSON objects of the next text frame.
async fn exchange(c: &mut Client, text: &str) -> Vec<Value> {
    c.ws.send(Message::text(text)).await.expect("send");
    next_text(c).await
}

async fn next_text(c: &mut Client) -> Vec<Value> {
    loop {
        match within("a text frame", c.ws.next()).await {
            Some(Ok(Message::Text(t))) => {
                return t
                    .split('\n')
                    .map(|l| serde_json::from_str(l).expect("each line is a json object"))
                    .collect()
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn wire_shape_of_connect_subscribe_and_publication() {
    let srv = Server::start();
    let mut c = Client::open(srv.addr, Wire::Json).await;
    let token = tokens::connect("alice");
    let frame = format!(
        "{}\n{}",
        json!({"id": 1, "connect": {"token": token, "name": "test"}}),
        json!({"id": 2, "subscribe": {"channel": "chat:w"}})
    );
    let mut replies = exchange(&mut c, &frame).await;
    if replies.len() < 2 {
        replies.extend(next_text(&mut c).await);
    }
    let connect = &replies[0];
    assert_eq!(connect["id"], 1, "{connect}");
    assert!(connect.get("error").is_none(), "{connect}");
    assert!(connect["connect"]["client"]
        .as_str()
        .is_some_and(|s| !s.is_empty()));
    assert_eq!(connect["connect"]["ping"], 25);
    assert_eq!(connect["connect"]["pong"], true);
    assert_eq!(replies[1], json!({"id": 2, "subscribe": {}}));

    srv.api().publish("chat:w", json!({"text": "hi"})).await;
    let push = next_text(&mut c).await;
    // `data` travels as embedded JSON, not base64; defaults are omitted.
    assert_eq!(
        push,
        vec![json!({"push": {"channel": "chat:w", "pub": {"data": {"text": "hi"}, "offset": 1}}})]
    );

    let reply = exchange(&mut c, r#"{"id":3,"rpc":{"method":"x"}}"#).await;
    assert_eq!(
        reply,
        vec![json!({"id": 3, "error": {"code": 104, "message": "method not found"}})]
    );
}

#[tokio::test]
async fn wire_shape_of_error_reply_and_history() {
    let srv = Server::start();
    srv.api().publish("open:h", json!([1, 2])).await;
    let mut c = Client::open(srv.addr, Wire::Json).await;
    let token = tokens::connect("alice");
    exchange(
        &mut c,
        &json!({"id": 1, "connect": {"token": token}}).to_string(),
    )
    .await;
    let r = exchange(&mut c, r#"{"id":2,"subscribe":{"channel":"nope:x"}}"#).await;
    assert_eq!(
        r,
        vec![json!({"id": 2, "error": {"code": 102, "message": "unknown channel"}})]
    );
    let r = exchange(
        &mut c,
        r#"{"id":3,"history":{"channel":"open:h","limit":-1}}"#,
    )
    .await;
    let h = &r[0]["history"];
    assert_eq!(r[0]["id"], 3);
    assert_eq!(h["publications"], json!([{"data": [1, 2], "offset": 1}]));
    assert_eq!(h["offset"], 1);
    assert!(h["epoch"].as_str().is_some_and(|e| !e.is_empty()), "{h}");
}

#[tokio::test]
async fn server_ping_is_an_empty_object() {
    let srv = Server::start_with(&[
        ("HERALD_CLIENT__PING_INTERVAL", "1s"),
        ("HERALD_CLIENT__PONG_TIMEOUT", "500ms"),
    ]);
    let (mut c, _) = Client::connect(srv.addr, Wire::Json, &tokens::connect("alice")).await;
    let ping = next_text(&mut c).await;
    assert_eq!(ping, vec![json!({})]);
    c.ws.send(Message::text("{}")).await.expect("pong");
    assert_eq!(next_text(&mut c).await, vec![json!({})], "second ping");
    c.ws.send(Message::text("{}")).await.expect("pong");
    c.roundtrip().await;
}

#[tokio::test]
async fn json_subprotocol_is_echoed_when_offered() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let srv = Server::start();
    let mut req = srv.ws_url().into_client_request().unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "centrifuge-json".parse().unwrap());
    let (ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .expect("handshake");
    assert_eq!(
        resp.headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok()),
        Some("centrifuge-json")
    );
    let mut c = Client::from_ws(ws, Wire::Json);
    c.connect_with(cmd::connect(&tokens::connect("alice")))
        .await;
    c.roundtrip().await;
}

#[tokio::test]
async fn wire_shape_of_server_side_subscriptions() {
    let srv = Server::start();
    let mut c = Client::open(srv.addr, Wire::Json).await;
    let token = tokens::connect_with_channels("alice", &["news", "feed:a"]);
    let reply = exchange(
        &mut c,
        &json!({"id": 1, "connect": {"token": token}}).to_string(),
    )
    .await;
    let subs = &reply[0]["connect"]["subs"];
    assert_eq!(subs["news"], json!({}), "{subs}");
    let feed = &subs["feed:a"];
    assert_eq!(feed["recoverable"], true, "{subs}");
    assert!(
        feed["epoch"].as_str().is_some_and(|e| !e.is_empty()),
        "{subs}"
    );
}
