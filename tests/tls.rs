//! TLS on the listener: WebSocket and API over rustls, and the certificate reload on
//! SIGHUP (start with certificate A, swap the files, SIGHUP, a new connection sees B,
//! an open one keeps working; a broken file on reload keeps B).

#[allow(unused_imports)]
mod common;

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;

struct Cert {
    pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

fn self_signed() -> Cert {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("self-signed cert");
    Cert {
        pem: c.cert.pem(),
        key_pem: c.signing_key.serialize_pem(),
        der: c.cert.der().clone(),
    }
}

/// Trusts both certificates, so the handshake succeeds with either and the test can
/// tell which one the server presented.
fn connector(trusted: &[&Cert]) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    for c in trusted {
        roots.add(c.der.clone()).expect("trust anchor");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    TlsConnector::from(Arc::new(cfg))
}

async fn tls(addr: std::net::SocketAddr, conn: &TlsConnector) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.expect("tcp");
    let name = ServerName::try_from("localhost").expect("name");
    common::within("tls handshake", conn.connect(name, tcp))
        .await
        .expect("tls handshake")
}

fn presented(s: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    s.get_ref()
        .1
        .peer_certificates()
        .expect("peer certificates")[0]
        .clone()
}

fn write_pair(dir: &std::path::Path, c: &Cert) {
    // Written aside and renamed, as a certificate manager would, so a reload never
    // reads half a file.
    for (name, text) in [("cert.pem", &c.pem), ("key.pem", &c.key_pem)] {
        let tmp = dir.join(format!("{name}.tmp"));
        std::fs::write(&tmp, text).expect("write");
        std::fs::rename(&tmp, dir.join(name)).expect("rename");
    }
}

fn sighup() {
    let status = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

type Ws = tokio_tungstenite::WebSocketStream<TlsStream<TcpStream>>;

/// A WebSocket over `stream`, connected as a Herald client.
async fn ws_connect(stream: TlsStream<TcpStream>, addr: std::net::SocketAddr) -> Ws {
    let url = format!("wss://localhost:{}/connection/websocket", addr.port());
    let (mut ws, _) = common::within("ws handshake", tokio_tungstenite::client_async(url, stream))
        .await
        .expect("ws over tls");
    let token = common::tokens::connect("alice");
    let reply = exchange(&mut ws, json!({"id": 1, "connect": {"token": token}})).await;
    assert!(reply["connect"]["client"].is_string(), "{reply}");
    ws
}

async fn exchange(ws: &mut Ws, cmd: Value) -> Value {
    ws.send(Message::text(cmd.to_string())).await.expect("send");
    loop {
        let msg = common::within("reply", ws.next())
            .await
            .expect("open")
            .expect("frame");
        if let Message::Text(t) = msg {
            let v: Value = serde_json::from_str(t.as_str()).expect("json");
            if v.get("id").is_some() {
                return v;
            }
        }
    }
}

#[tokio::test]
async fn websocket_and_api_over_tls_and_certificate_reload_on_sighup() {
    let dir = std::env::temp_dir().join(format!("herald-tls-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (a, b) = (self_signed(), self_signed());
    write_pair(&dir, &a);
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let srv = common::Server::start_with(&[
        ("HERALD_HTTP__TLS_CERT", cert.to_str().expect("utf-8")),
        ("HERALD_HTTP__TLS_KEY", key.to_str().expect("utf-8")),
    ]);
    let trust = connector(&[&a, &b]);

    // Certificate A; WebSocket works over it.
    let s = tls(srv.addr, &trust).await;
    assert_eq!(presented(&s), a.der);
    let mut open = ws_connect(s, srv.addr).await;

    // The API too.
    let mut s = tls(srv.addr, &trust).await;
    s.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut resp = String::new();
    common::within("health", s.read_to_string(&mut resp))
        .await
        .ok();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");

    // Plain TCP gets no HTTP answer from a TLS listener.
    let plain = tokio_tungstenite::connect_async(format!("ws://{}/connection/websocket", srv.addr));
    assert!(tokio::time::timeout(Duration::from_secs(3), plain)
        .await
        .map_or(true, |r| r.is_err()));

    // Swap the files to B and signal: new handshakes present B.
    write_pair(&dir, &b);
    sighup();
    let deadline = tokio::time::Instant::now() + common::WAIT;
    loop {
        let s = tls(srv.addr, &trust).await;
        if presented(&s) == b.der {
            ws_connect(s, srv.addr).await;
            break;
        }
        assert_eq!(presented(&s), a.der);
        assert!(
            tokio::time::Instant::now() < deadline,
            "certificate B never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The connection made with A is still up.
    let pong = exchange(&mut open, json!({"id": 2, "ping": {}})).await;
    assert_eq!(pong["id"], 2);

    // A broken file on the next reload changes nothing: B stays.
    std::fs::write(&cert, "not a certificate").expect("write");
    sighup();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = tls(srv.addr, &trust).await;
    assert_eq!(presented(&s), b.der);

    // Only A trusted: a client pinned to the old certificate now fails the handshake.
    let tcp = TcpStream::connect(srv.addr).await.expect("tcp");
    let name = ServerName::try_from("localhost").expect("name");
    assert!(connector(&[&a]).connect(name, tcp).await.is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn cert_without_key_is_a_config_error() {
    let err = herald::config::Config::load_from(
        None,
        "t",
        vec![("HERALD_HTTP__TLS_CERT".to_string(), "/x.pem".to_string())],
    )
    .expect_err("half a TLS config");
    assert!(err.to_string().contains("http.tls_cert"), "{err}");
}
