//! Herald's own WebSocket transport at the byte level (src/gateway/upgrade.rs, wire.rs):
//! frames sent in the same packet as the handshake, fragments, client pings, the close
//! handshake, and the HTTP answers to requests that are not a valid upgrade.

mod common;

use actix_http::ws::{OpCode, Parser};
use bytes::BytesMut;
use common::{tokens, Client, Server, Wire};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn upgrade_request(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
         sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n"
    )
}

/// A masked client frame.
fn frame(op: OpCode, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mut b = BytesMut::new();
    Parser::write_message(&mut b, payload, op, fin, true);
    b.to_vec()
}

/// Reads the HTTP response head; returns it and the bytes read past it.
async fn read_head(s: &mut TcpStream) -> (String, BytesMut) {
    let mut buf = BytesMut::new();
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8(buf.split_to(end + 4).to_vec()).unwrap();
            return (head, buf);
        }
        let mut chunk = [0u8; 1024];
        let n = common::within("response head", s.read(&mut chunk))
            .await
            .unwrap();
        assert!(n > 0, "closed before the response head: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads the next server frame (unmasked).
async fn next_frame(s: &mut TcpStream, buf: &mut BytesMut) -> (OpCode, Vec<u8>) {
    loop {
        if let Some((fin, op, p)) = Parser::parse(buf, false, 1 << 20).unwrap() {
            assert!(fin, "the server sends whole messages");
            return (op, p.map(|p| p.to_vec()).unwrap_or_default());
        }
        let mut chunk = [0u8; 4096];
        let n = common::within("frame", s.read(&mut chunk)).await.unwrap();
        assert!(n > 0, "closed while waiting for a frame");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test]
async fn frames_in_the_handshake_packet_fragments_ping_and_close() {
    let srv = Server::start();
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    // The handshake and the first command in one write: the command arrives in the
    // HTTP layer's read buffer and must be carried over to the session.
    let connect = format!(
        "{{\"id\":1,\"connect\":{{\"token\":\"{}\"}}}}",
        tokens::connect("alice")
    );
    let mut packet = upgrade_request("/connection/websocket").into_bytes();
    packet.extend(frame(OpCode::Text, true, connect.as_bytes()));
    s.write_all(&packet).await.unwrap();
    let (head, mut buf) = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    // RFC 6455 §1.3's example key and its accept value.
    assert!(
        head.contains("sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
        "{head}"
    );
    let (op, reply) = next_frame(&mut s, &mut buf).await;
    assert_eq!(op, OpCode::Text);
    let reply: serde_json::Value = serde_json::from_slice(&reply).unwrap();
    assert_eq!(reply["id"], 1);
    assert!(reply["connect"]["client"].is_string(), "{reply}");

    // A command in three fragments with a ping between them.
    let cmd = br#"{"id":2,"subscribe":{"channel":"news"}}"#;
    let mut packet = frame(OpCode::Text, false, &cmd[..10]);
    packet.extend(frame(OpCode::Ping, true, b"hi"));
    packet.extend(frame(OpCode::Continue, false, &cmd[10..20]));
    packet.extend(frame(OpCode::Continue, true, &cmd[20..]));
    // Byte by byte: every frame boundary falls inside a read somewhere.
    for b in packet {
        s.write_all(&[b]).await.unwrap();
    }
    assert_eq!(
        next_frame(&mut s, &mut buf).await,
        (OpCode::Pong, b"hi".to_vec())
    );
    let (op, reply) = next_frame(&mut s, &mut buf).await;
    assert_eq!(op, OpCode::Text);
    let reply: serde_json::Value = serde_json::from_slice(&reply).unwrap();
    assert_eq!(reply["id"], 2, "{reply}");
    assert!(reply.get("error").is_none(), "{reply}");

    // The client closes: the server answers with a close frame and closes its side.
    s.write_all(&frame(OpCode::Close, true, &1000u16.to_be_bytes()))
        .await
        .unwrap();
    let (op, _) = next_frame(&mut s, &mut buf).await;
    assert_eq!(op, OpCode::Close);
    let mut rest = Vec::new();
    common::within("server EOF", s.read_to_end(&mut rest))
        .await
        .unwrap();
    assert!(rest.is_empty(), "nothing after the close frame: {rest:?}");
}

#[tokio::test]
async fn requests_that_are_not_a_websocket_upgrade_get_http_errors() {
    let srv = Server::start();
    let status = |head: &str| head.split(' ').nth(1).unwrap_or("").to_string();

    // An upgrade of another path.
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(upgrade_request("/health").as_bytes())
        .await
        .unwrap();
    let (head, _) = read_head(&mut s).await;
    assert_eq!(status(&head), "404", "{head}");

    // `Upgrade: websocket` without `Connection: upgrade`, without a version, and an
    // `Upgrade` header that only lists websocket (the HTTP layer passes it to
    // actix-web's route instead of the upgrade hook).
    for req in [
        "GET /connection/websocket HTTP/1.1\r\nhost: h\r\nupgrade: websocket, foo\r\n\
         connection: upgrade\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         sec-websocket-version: 13\r\n\r\n",
        "GET /connection/websocket HTTP/1.1\r\nhost: h\r\nupgrade: websocket\r\n\
         sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n",
        "GET /connection/websocket HTTP/1.1\r\nhost: h\r\nupgrade: websocket\r\n\
         connection: upgrade\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    ] {
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        let (head, _) = read_head(&mut s).await;
        assert_eq!(status(&head), "400", "{head}");
    }

    // A plain GET of the endpoint (no upgrade at all) goes through actix-web.
    let res = reqwest::get(format!("http://{}/connection/websocket", srv.addr))
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 400);

    // The API is still served on the same listener, and WebSockets still open.
    let res = reqwest::get(format!("http://{}/health", srv.addr))
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    Client::connect(srv.addr, Wire::Protobuf, &tokens::connect("bob")).await;
}
