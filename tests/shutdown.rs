//! Graceful shutdown: every client is told 3001 "shutdown", then `run` returns Ok.

mod common;

use common::client::cmd;
use common::{tokens, Client, Server, Wire};

#[tokio::test]
async fn shutdown_closes_clients_with_3001_and_run_returns_ok() {
    let mut srv = Server::start();
    let (mut json, _) = Client::connect(srv.addr, Wire::Json, &tokens::connect("alice")).await;
    let (mut proto, _) = Client::connect(srv.addr, Wire::Protobuf, &tokens::connect("bob")).await;
    json.ok(cmd::subscribe("chat:s")).await;
    proto.ok(cmd::subscribe("chat:s")).await;
    // Opened but not connected yet (its first command would have to be connect).
    let mut idle = Client::open(srv.addr, Wire::Json).await;

    srv.trigger_shutdown();
    for c in [&mut json, &mut proto, &mut idle] {
        let close = c.expect_close().await;
        assert_eq!(close.code, 3001, "{close:?}");
        assert_eq!(close.reason, "shutdown");
    }
    srv.join()
        .await
        .expect("run returns Ok after a graceful shutdown");
}

#[tokio::test]
async fn shutdown_without_clients_returns_ok() {
    let srv = Server::start();
    // The server answers before it is stopped.
    let (mut c, _) = Client::connect(srv.addr, Wire::Json, &tokens::connect("alice")).await;
    c.roundtrip().await;
    drop(c);
    srv.join().await.expect("run returns Ok");
}
