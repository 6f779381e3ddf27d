//! `http.allowed_origins`: a WebSocket handshake from a browser page of a disallowed
//! origin gets HTTP 403; clients without an `Origin` header are not affected.

mod common;

use common::{Client, Server, Wire};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Error;

/// The handshake's HTTP status: 101 when the WebSocket opened.
async fn status(srv: &Server, origin: Option<&str>) -> u16 {
    let mut req = srv.ws_url().into_client_request().expect("request");
    if let Some(o) = origin {
        req.headers_mut()
            .insert("Origin", HeaderValue::from_str(o).expect("header"));
    }
    match common::within("handshake", tokio_tungstenite::connect_async(req)).await {
        Ok((_, resp)) => resp.status().as_u16(),
        Err(Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("handshake failed without an HTTP answer: {e}"),
    }
}

#[tokio::test]
async fn default_allows_same_origin_and_clients_without_origin() {
    let srv = Server::start();
    let own = format!("http://{}", srv.addr);
    assert_eq!(status(&srv, None).await, 101);
    assert_eq!(status(&srv, Some(&own)).await, 101);
    assert_eq!(status(&srv, Some("https://evil.example")).await, 403);
    assert_eq!(status(&srv, Some("null")).await, 403);
    // A refused handshake is not a connection; a normal client still connects.
    Client::connect(srv.addr, Wire::Json, &common::tokens::connect("alice")).await;
}

#[tokio::test]
async fn listed_origins_and_wildcards() {
    let srv = Server::start_with(&[(
        "HERALD_HTTP__ALLOWED_ORIGINS",
        "https://app.example.com,https://*.example.org",
    )]);
    assert_eq!(status(&srv, Some("https://app.example.com")).await, 101);
    assert_eq!(status(&srv, Some("https://a.example.org")).await, 101);
    assert_eq!(
        status(&srv, Some("https://example.org.evil.net")).await,
        403
    );
    assert_eq!(status(&srv, Some("http://app.example.com")).await, 403);
    // With a list, even the server's own origin must be listed.
    assert_eq!(
        status(&srv, Some(&format!("http://{}", srv.addr))).await,
        403
    );
    assert_eq!(status(&srv, None).await, 101);

    let any = Server::start_with(&[("HERALD_HTTP__ALLOWED_ORIGINS", "*")]);
    assert_eq!(status(&any, Some("https://anything.example")).await, 101);
}
