//! Connection and subscription tokens, valid and broken in every documented way.

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use super::{now, SECRET};

/// Signs arbitrary claims with HS256 and `secret`.
pub fn sign(claims: &Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign token")
}

/// A connection token for `user`, valid for an hour, minted by Herald's own helper.
pub fn connect(user: &str) -> String {
    herald::auth::mint_hs256(
        SECRET,
        &herald::auth::MintClaims {
            sub: user,
            iat: now(),
            exp: Some(now() + 3600),
            channels: &[],
            info: None,
            channel: None,
        },
    )
    .expect("mint")
}

/// A connection token expiring `secs` from now.
pub fn connect_ttl(user: &str, secs: i64) -> String {
    sign(
        &json!({"sub": user, "iat": now(), "exp": now() + secs}),
        SECRET,
    )
}

/// A connection token whose `channels` claim subscribes the connection server-side.
pub fn connect_with_channels(user: &str, channels: &[&str]) -> String {
    sign(
        &json!({"sub": user, "exp": now() + 3600, "channels": channels}),
        SECRET,
    )
}

/// A connection token carrying `info` (shown in presence, join/leave, publications).
pub fn connect_with_info(user: &str, info: Value) -> String {
    sign(
        &json!({"sub": user, "exp": now() + 3600, "info": info}),
        SECRET,
    )
}

pub fn expired(user: &str) -> String {
    sign(&json!({"sub": user, "exp": now() - 120}), SECRET)
}

pub fn not_yet_valid(user: &str) -> String {
    sign(
        &json!({"sub": user, "exp": now() + 3600, "nbf": now() + 600}),
        SECRET,
    )
}

pub fn wrong_secret(user: &str) -> String {
    sign(
        &json!({"sub": user, "exp": now() + 3600}),
        "not-the-test-secret",
    )
}

/// An unsigned token (`alg: none`) with an empty signature part.
pub fn alg_none(user: &str) -> String {
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let claims = json!({"sub": user, "exp": now() + 3600}).to_string();
    format!(
        "{}.{}.",
        e.encode(r#"{"alg":"none","typ":"JWT"}"#),
        e.encode(claims)
    )
}

/// A connection token with the given `aud` and `iss`.
pub fn with_aud_iss(user: &str, aud: &str, iss: &str) -> String {
    sign(
        &json!({"sub": user, "exp": now() + 3600, "aud": aud, "iss": iss}),
        SECRET,
    )
}

/// A subscription token for `user` and `channel`, expiring `secs` from now.
pub fn subscribe(user: &str, channel: &str, secs: i64) -> String {
    sign(
        &json!({"sub": user, "channel": channel, "iat": now(), "exp": now() + secs}),
        SECRET,
    )
}

/// A subscription token carrying `info` (the subscription's `chan_info`).
pub fn subscribe_with_info(user: &str, channel: &str, info: Value) -> String {
    sign(
        &json!({"sub": user, "channel": channel, "exp": now() + 3600, "info": info}),
        SECRET,
    )
}
