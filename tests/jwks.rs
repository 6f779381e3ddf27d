//! `auth.jwks_url`: RSA and EC tokens verified by `kid` against a JWKS served by a local
//! HTTP server whose key set changes mid-test (rotation), the rate limit on refetches
//! for unknown kids, the periodic refresh, and a JWKS that cannot be fetched.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::client::cmd;
use common::{Client, Server, Wire};
use herald::protocol::messages::Command;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/fixtures/keys/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("fixture")
}

/// A JWK fixture with `kid` added.
fn jwk(file: &str, kid: &str) -> Value {
    let mut v: Value = serde_json::from_str(&fixture(file)).expect("jwk json");
    v["kid"] = json!(kid);
    v
}

/// A JWKS over plain HTTP/1.1: answers every request with the current document and
/// counts the requests.
struct JwksServer {
    addr: SocketAddr,
    doc: Arc<Mutex<Value>>,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    async fn start(doc: Value) -> JwksServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let doc = Arc::new(Mutex::new(doc));
        let hits = Arc::new(AtomicUsize::new(0));
        let (d, h) = (doc.clone(), hits.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let (d, h) = (d.clone(), h.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    h.fetch_add(1, Ordering::SeqCst);
                    let body = d.lock().to_string();
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = sock.write_all(resp.as_bytes()).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        JwksServer {
            addr,
            doc,
            hits,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/.well-known/jwks.json", self.addr)
    }

    fn set(&self, doc: Value) {
        *self.doc.lock() = doc;
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, user: &str) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&h, &json!({"sub": user, "exp": common::now() + 600}), key).expect("sign")
}

fn rsa1() -> EncodingKey {
    EncodingKey::from_rsa_pem(fixture("rsa_private.pem").as_bytes()).expect("rsa1")
}
fn rsa2() -> EncodingKey {
    EncodingKey::from_rsa_pem(fixture("rsa2_private.pem").as_bytes()).expect("rsa2")
}
fn ec256() -> EncodingKey {
    EncodingKey::from_ec_pem(fixture("ec256_private.pem").as_bytes()).expect("ec256")
}
fn ec384() -> EncodingKey {
    EncodingKey::from_ec_pem(fixture("ec384_private.pem").as_bytes()).expect("ec384")
}

async fn accepted(srv: &Server, token: &str) {
    let (mut c, res) = Client::connect(srv.addr, Wire::Json, token).await;
    assert!(!res.client.is_empty());
    c.roundtrip().await;
}

async fn closed(srv: &Server, token: &str) -> u16 {
    let mut s = Client::open(srv.addr, Wire::Json).await;
    s.send(&Command {
        id: 1,
        ..cmd::connect(token)
    })
    .await;
    s.expect_close().await.code
}

fn start(jwks_url: &str, refresh: &str) -> Server {
    Server::start_with(&[
        ("HERALD_AUTH__JWKS_URL", jwks_url),
        ("HERALD_AUTH__JWKS_MIN_REFETCH", "300ms"),
        ("HERALD_AUTH__JWKS_REFRESH_INTERVAL", refresh),
    ])
}

#[tokio::test]
async fn keys_by_kid_with_rotation_and_rate_limited_refetch() {
    let jwks = JwksServer::start(json!({"keys": [
        jwk("rsa_public.jwk.json", "r1"),
        jwk("ec256_public.jwk.json", "e1"),
        jwk("ec384_public.jwk.json", "e3"),
    ]}))
    .await;
    let srv = start(&jwks.url(), "1h");

    accepted(&srv, &sign(Algorithm::RS256, Some("r1"), &rsa1(), "alice")).await;
    accepted(&srv, &sign(Algorithm::RS512, Some("r1"), &rsa1(), "alice")).await;
    accepted(&srv, &sign(Algorithm::ES256, Some("e1"), &ec256(), "alice")).await;
    accepted(&srv, &sign(Algorithm::ES384, Some("e3"), &ec384(), "alice")).await;
    // HMAC tokens still use the HMAC secret.
    accepted(&srv, &common::tokens::connect("alice")).await;

    // A key under another kid, a kid of the wrong key type, the RSA key as an HMAC
    // secret: all invalid (3500).
    assert_eq!(
        closed(&srv, &sign(Algorithm::RS256, Some("r1"), &rsa2(), "m")).await,
        3500
    );
    assert_eq!(
        closed(&srv, &sign(Algorithm::RS256, Some("e1"), &rsa1(), "m")).await,
        3500
    );
    assert_eq!(
        closed(&srv, &sign(Algorithm::ES256, Some("e3"), &ec256(), "m")).await,
        3500
    );
    let confused = sign(
        Algorithm::HS256,
        Some("r1"),
        &EncodingKey::from_secret(fixture("rsa_public.pem").as_bytes()),
        "m",
    );
    assert_eq!(closed(&srv, &confused).await, 3500);

    // Rotation: the new key is served; a token with its kid makes Herald refetch.
    tokio::time::sleep(Duration::from_millis(350)).await;
    let before = jwks.hits();
    jwks.set(json!({"keys": [
        jwk("rsa2_public.jwk.json", "r2"),
        jwk("ec256_public.jwk.json", "e1"),
    ]}));
    accepted(&srv, &sign(Algorithm::RS256, Some("r2"), &rsa2(), "bob")).await;
    assert_eq!(jwks.hits(), before + 1, "one refetch for the new kid");
    // The retired key is gone with the old set.
    assert_eq!(
        closed(&srv, &sign(Algorithm::RS256, Some("r1"), &rsa1(), "alice")).await,
        3500
    );

    // Unknown kids in a burst: at most one refetch per jwks_min_refetch.
    tokio::time::sleep(Duration::from_millis(350)).await;
    let before = jwks.hits();
    for i in 0..20 {
        let t = sign(Algorithm::RS256, Some(&format!("forged{i}")), &rsa2(), "m");
        assert_eq!(closed(&srv, &t).await, 3500);
    }
    let refetches = jwks.hits() - before;
    assert!(
        (1..=2).contains(&refetches),
        "{refetches} refetches for 20 unknown kids"
    );
}

#[tokio::test]
async fn periodic_refresh_picks_up_new_keys_without_a_token_asking() {
    let jwks = JwksServer::start(json!({"keys": [jwk("rsa_public.jwk.json", "r1")]})).await;
    let srv = start(&jwks.url(), "200ms");
    accepted(&srv, &sign(Algorithm::RS256, Some("r1"), &rsa1(), "alice")).await;
    let before = jwks.hits();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        jwks.hits() >= before + 3,
        "periodic refresh: {} -> {}",
        before,
        jwks.hits()
    );
}

#[tokio::test]
async fn jwks_unreachable_is_a_temporary_error_for_kid_tokens_only() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let srv = start(&format!("http://127.0.0.1:{port}/jwks"), "1h");
    let mut s = Client::open(srv.addr, Wire::Json).await;
    let r = s
        .call(cmd::connect(&sign(
            Algorithm::RS256,
            Some("r1"),
            &rsa1(),
            "alice",
        )))
        .await;
    let e = r.error.expect("error reply");
    assert_eq!((e.code, e.temporary), (100, true));
    accepted(&srv, &common::tokens::connect("alice")).await;
}
