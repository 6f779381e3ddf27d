//! RSA and ECDSA public keys given through the environment (multi-line PEM in one
//! variable, as container platforms pass them) verify RS256 / ES256 connection tokens.

mod common;

use common::{Client, Server, Wire};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/fixtures/keys/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("fixture key")
}

fn token(alg: Algorithm, key: &EncodingKey, user: &str) -> String {
    jsonwebtoken::encode(
        &Header::new(alg),
        &json!({"sub": user, "exp": common::now() + 600}),
        key,
    )
    .expect("sign")
}

#[tokio::test]
async fn rs256_and_es256_tokens_from_env_configured_keys() {
    let rsa_pub = fixture("rsa_public.pem");
    let ec_pub = fixture("ec256_public.pem");
    let srv = Server::start_with(&[
        ("HERALD_AUTH__RSA_PUBLIC_KEY", &rsa_pub),
        ("HERALD_AUTH__ECDSA_PUBLIC_KEY", &ec_pub),
    ]);

    let rsa = EncodingKey::from_rsa_pem(fixture("rsa_private.pem").as_bytes()).expect("rsa key");
    let (_c, res) = Client::connect(
        srv.addr,
        Wire::Json,
        &token(Algorithm::RS256, &rsa, "rsa-user"),
    )
    .await;
    assert!(!res.client.is_empty());

    let ec = EncodingKey::from_ec_pem(fixture("ec256_private.pem").as_bytes()).expect("ec key");
    let (_c, res) = Client::connect(
        srv.addr,
        Wire::Protobuf,
        &token(Algorithm::ES256, &ec, "ec-user"),
    )
    .await;
    assert!(!res.client.is_empty());

    let info = srv
        .api()
        .ok("presence_stats", json!({"channel": "x"}))
        .await;
    assert_eq!(info["num_clients"], 0);
}
