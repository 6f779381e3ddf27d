//! Connection and subscription JWTs (Centrifugo-compatible claims) and API-key checks.
//!
//! The key family is picked from the token's `alg` header, and only keys that are
//! configured for that family are tried: an RSA public key can never be used as an HMAC
//! secret (algorithm confusion), and `alg: none` is not a known algorithm at all.
//! With `auth.jwks_url`, RSA and EC tokens that carry a `kid` are verified with the
//! JWKS key of that kid only ([`jwks`]).

pub mod jwks;

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use jsonwebtoken::{errors::ErrorKind, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::config::AuthConfig;
use crate::node::revocation::TokenMeta;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The token was valid but its `exp` has passed: the client should fetch a new one.
    #[error("token expired")]
    Expired,
    #[error("invalid token: {0}")]
    Invalid(String),
    /// The keys needed to check the token cannot be had now (JWKS never fetched): a
    /// temporary failure, the client retries.
    #[error("token keys unavailable")]
    Unavailable,
}

/// Claims of a connection token.
#[derive(Debug, Deserialize)]
struct ConnectClaims {
    #[serde(default)]
    sub: String,
    #[serde(default)]
    exp: Option<i64>,
    #[serde(default)]
    iat: Option<i64>,
    #[serde(default)]
    expire_at: Option<i64>,
    #[serde(default)]
    info: Option<Box<RawValue>>,
    #[serde(default)]
    b64info: Option<String>,
    #[serde(default)]
    channels: Vec<String>,
    #[serde(default)]
    jti: Option<String>,
    /// Only subscription tokens carry it: a connection token with a `channel` claim is
    /// a subscription token presented in the wrong place, and refused.
    #[serde(default)]
    channel: Option<String>,
}

/// Claims of a subscription token.
#[derive(Debug, Deserialize)]
struct SubscribeClaims {
    #[serde(default)]
    sub: String,
    #[serde(default)]
    channel: String,
    #[serde(default)]
    exp: Option<i64>,
    #[serde(default)]
    iat: Option<i64>,
    #[serde(default)]
    expire_at: Option<i64>,
    #[serde(default)]
    info: Option<Box<RawValue>>,
    #[serde(default)]
    b64info: Option<String>,
}

/// What a verified connection token grants.
#[derive(Debug, Clone, Default)]
pub struct ConnectGrant {
    pub user: String,
    /// Unix seconds after which the connection must refresh; `None` never expires.
    pub expires_at: Option<i64>,
    pub info: Bytes,
    pub channels: Vec<String>,
    /// `jti`, `iat` and `exp`, for revocation checks.
    pub token: TokenMeta,
}

/// What a verified subscription token grants.
#[derive(Debug, Clone, Default)]
pub struct SubscribeGrant {
    pub expires_at: Option<i64>,
    pub info: Bytes,
    /// `iat`, for `invalidate_user_tokens` with a channel.
    pub iat: Option<i64>,
}

pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Verifies tokens against the configured keys.
pub struct Verifier {
    hmac: Option<DecodingKey>,
    rsa: Option<DecodingKey>,
    ecdsa: Option<DecodingKey>,
    jwks: Option<std::sync::Arc<jwks::Jwks>>,
    audience: String,
    issuer: String,
}

impl Verifier {
    /// Builds the key set; `hmac_secret` is the effective secret (possibly generated).
    pub fn new(cfg: &AuthConfig, hmac_secret: &str) -> Result<Self, String> {
        let rsa = if cfg.rsa_public_key.is_empty() {
            None
        } else {
            Some(
                DecodingKey::from_rsa_pem(cfg.rsa_public_key.as_bytes())
                    .map_err(|e| format!("auth.rsa_public_key: {e}"))?,
            )
        };
        let ecdsa = if cfg.ecdsa_public_key.is_empty() {
            None
        } else {
            Some(
                DecodingKey::from_ec_pem(cfg.ecdsa_public_key.as_bytes())
                    .map_err(|e| format!("auth.ecdsa_public_key: {e}"))?,
            )
        };
        let hmac =
            (!hmac_secret.is_empty()).then(|| DecodingKey::from_secret(hmac_secret.as_bytes()));
        let jwks = if cfg.jwks_url.is_empty() {
            None
        } else {
            Some(std::sync::Arc::new(jwks::Jwks::new(
                &cfg.jwks_url,
                cfg.jwks_min_refetch,
            )?))
        };
        Ok(Verifier {
            hmac,
            rsa,
            ecdsa,
            jwks,
            audience: cfg.audience.clone(),
            issuer: cfg.issuer.clone(),
        })
    }

    /// The JWKS set, for the periodic refresh.
    pub fn jwks(&self) -> Option<&std::sync::Arc<jwks::Jwks>> {
        self.jwks.as_ref()
    }

    /// A token whose kid the JWKS cache lacks makes the cache refetch (rate limited)
    /// before it is verified; call before `verify_*`.
    pub async fn prepare(&self, token: &str) {
        let Some(set) = &self.jwks else { return };
        let Ok(header) = jsonwebtoken::decode_header(token) else {
            return;
        };
        if let (Some(kid), true) = (&header.kid, is_public_key_alg(header.alg)) {
            if !matches!(set.lookup(kid, header.alg), jwks::Lookup::Found(_)) {
                set.refresh_for_unknown_kid(kid, header.alg).await;
            }
        }
    }

    fn decode<T: serde::de::DeserializeOwned>(&self, token: &str) -> Result<T, TokenError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| TokenError::Invalid(e.to_string()))?;
        let from_jwks;
        let key = match (&self.jwks, &header.kid) {
            (Some(set), Some(kid)) if is_public_key_alg(header.alg) => {
                match set.lookup(kid, header.alg) {
                    jwks::Lookup::Found(k) => {
                        from_jwks = k;
                        Some(&from_jwks)
                    }
                    jwks::Lookup::Unknown => {
                        return Err(TokenError::Invalid(format!("unknown kid {kid:?}")))
                    }
                    jwks::Lookup::NotLoaded => return Err(TokenError::Unavailable),
                }
            }
            _ => match header.alg {
                Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => self.hmac.as_ref(),
                Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 => self.rsa.as_ref(),
                Algorithm::ES256 | Algorithm::ES384 => self.ecdsa.as_ref(),
                other => {
                    return Err(TokenError::Invalid(format!(
                        "algorithm {other:?} not supported"
                    )))
                }
            },
        }
        .ok_or_else(|| TokenError::Invalid(format!("no key configured for {:?}", header.alg)))?;
        let mut v = Validation::new(header.alg);
        v.leeway = 0;
        v.validate_nbf = true;
        v.required_spec_claims.clear();
        if self.audience.is_empty() {
            v.validate_aud = false;
        } else {
            v.set_audience(&[&self.audience]);
            v.required_spec_claims.insert("aud".into());
        }
        if !self.issuer.is_empty() {
            v.set_issuer(&[&self.issuer]);
            v.required_spec_claims.insert("iss".into());
        }
        match jsonwebtoken::decode::<T>(token, key, &v) {
            Ok(data) => Ok(data.claims),
            // A token not valid yet (`nbf`) is treated like an expired one, as Centrifugo
            // does: the SDK fetches a fresh token instead of giving up.
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::ExpiredSignature | ErrorKind::ImmatureSignature
                ) =>
            {
                Err(TokenError::Expired)
            }
            Err(e) => Err(TokenError::Invalid(e.to_string())),
        }
    }

    pub fn verify_connect(&self, token: &str) -> Result<ConnectGrant, TokenError> {
        let c: ConnectClaims = self.decode(token)?;
        check_iat(c.iat)?;
        if c.channel.is_some() {
            return Err(TokenError::Invalid(
                "a subscription token (channel claim) cannot authenticate a connection".into(),
            ));
        }
        Ok(ConnectGrant {
            user: c.sub,
            expires_at: effective_expiry(c.exp, c.expire_at),
            info: info_bytes(c.info, c.b64info)?,
            channels: c.channels,
            token: TokenMeta {
                jti: c.jti.filter(|j| !j.is_empty()),
                iat: c.iat,
                exp: c.exp,
            },
        })
    }

    /// Verifies a subscription token for `channel`, issued to `user`.
    pub fn verify_subscribe(
        &self,
        token: &str,
        user: &str,
        channel: &str,
    ) -> Result<SubscribeGrant, TokenError> {
        let c: SubscribeClaims = self.decode(token)?;
        check_iat(c.iat)?;
        if c.sub != user {
            return Err(TokenError::Invalid(
                "token sub does not match the connection's user".into(),
            ));
        }
        if c.channel != channel {
            return Err(TokenError::Invalid("token channel does not match".into()));
        }
        Ok(SubscribeGrant {
            expires_at: effective_expiry(c.exp, c.expire_at),
            info: info_bytes(c.info, c.b64info)?,
            iat: c.iat,
        })
    }
}

/// RSA and EC algorithms: the ones a JWKS key can verify.
fn is_public_key_alg(alg: Algorithm) -> bool {
    matches!(
        alg,
        Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::ES256
            | Algorithm::ES384
    )
}

/// `expire_at` overrides `exp` for the connection's lifetime; 0 means "never".
fn effective_expiry(exp: Option<i64>, expire_at: Option<i64>) -> Option<i64> {
    match expire_at {
        Some(0) => None,
        Some(t) => Some(t),
        None => exp.filter(|t| *t > 0),
    }
}

/// A token issued in the future is a clock problem or a forgery; a small skew is allowed.
fn check_iat(iat: Option<i64>) -> Result<(), TokenError> {
    const SKEW: i64 = 30;
    match iat {
        Some(t) if t > now_unix() + SKEW => Err(TokenError::Invalid("iat is in the future".into())),
        _ => Ok(()),
    }
}

fn info_bytes(info: Option<Box<RawValue>>, b64: Option<String>) -> Result<Bytes, TokenError> {
    if let Some(raw) = info {
        let s: Box<str> = raw.into();
        return Ok(Bytes::from(String::from(s)));
    }
    if let Some(b) = b64 {
        use base64::Engine as _;
        let v = base64::engine::general_purpose::STANDARD
            .decode(b.as_bytes())
            .map_err(|e| TokenError::Invalid(format!("b64info: {e}")))?;
        return Ok(Bytes::from(v));
    }
    Ok(Bytes::new())
}

/// Claims `herald token` writes.
#[derive(Debug, Serialize)]
pub struct MintClaims<'a> {
    pub sub: &'a str,
    pub iat: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub channels: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<&'a str>,
}

/// Mints an HS256 token (development tooling and tests).
pub fn mint_hs256(
    secret: &str,
    claims: &MintClaims<'_>,
) -> Result<String, jsonwebtoken::errors::Error> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
}

/// Compares an API key without leaking, through timing, how much of it matched.
pub fn api_key_matches(expected: &str, given: &str) -> bool {
    use subtle::ConstantTimeEq;
    // Lengths are compared in the clear: the length of a random key is not a secret.
    expected.len() == given.len() && bool::from(expected.as_bytes().ct_eq(given.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> String {
        std::fs::read_to_string(format!(
            "{}/tests/fixtures/keys/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    }

    fn verifier_with(rsa: &str, ec: &str) -> Verifier {
        let mut cfg = base_cfg("", "");
        cfg.rsa_public_key = rsa.into();
        cfg.ecdsa_public_key = ec.into();
        Verifier::new(&cfg, "secret").unwrap()
    }

    fn verifier(aud: &str, iss: &str) -> Verifier {
        Verifier::new(&base_cfg(aud, iss), "secret").unwrap()
    }

    fn base_cfg(aud: &str, iss: &str) -> AuthConfig {
        AuthConfig {
            hmac_secret: String::new(),
            rsa_public_key: String::new(),
            ecdsa_public_key: String::new(),
            audience: aud.into(),
            issuer: iss.into(),
            allow_anonymous: false,
            personal_channel: false,
            personal_namespace: String::new(),
            expired_close_delay: std::time::Duration::from_secs(1),
            jwks_url: String::new(),
            jwks_refresh_interval: std::time::Duration::from_secs(60),
            jwks_min_refetch: std::time::Duration::from_secs(1),
        }
    }

    fn signed(alg: Algorithm, key: &EncodingKey) -> String {
        jsonwebtoken::encode(&Header::new(alg), &serde_json::json!({"sub": "alice"}), key).unwrap()
    }

    #[test]
    fn rsa_and_ecdsa_algorithms() {
        let rsa = EncodingKey::from_rsa_pem(key("rsa_private.pem").as_bytes()).unwrap();
        let v = verifier_with(&key("rsa_public.pem"), &key("ec256_public.pem"));
        for alg in [Algorithm::RS256, Algorithm::RS384, Algorithm::RS512] {
            assert_eq!(
                v.verify_connect(&signed(alg, &rsa)).unwrap().user,
                "alice",
                "{alg:?}"
            );
        }
        let ec256 = EncodingKey::from_ec_pem(key("ec256_private.pem").as_bytes()).unwrap();
        assert_eq!(
            v.verify_connect(&signed(Algorithm::ES256, &ec256))
                .unwrap()
                .user,
            "alice"
        );
        let v384 = verifier_with("", &key("ec384_public.pem"));
        let ec384 = EncodingKey::from_ec_pem(key("ec384_private.pem").as_bytes()).unwrap();
        assert_eq!(
            v384.verify_connect(&signed(Algorithm::ES384, &ec384))
                .unwrap()
                .user,
            "alice"
        );
        // No RSA key configured: RS tokens are refused, not tried against another key.
        assert!(v384
            .verify_connect(&signed(Algorithm::RS256, &rsa))
            .is_err());
    }

    #[test]
    fn rsa_public_key_used_as_hmac_secret_is_rejected() {
        // Algorithm confusion: an attacker signs HS256 with the (public) RSA key bytes.
        let public = key("rsa_public.pem");
        let forged = signed(
            Algorithm::HS256,
            &EncodingKey::from_secret(public.as_bytes()),
        );
        let v = verifier_with(&public, "");
        assert!(matches!(
            v.verify_connect(&forged),
            Err(TokenError::Invalid(_))
        ));
    }

    #[test]
    fn not_yet_valid_is_treated_as_expired() {
        let t = token(
            serde_json::json!({"sub":"a","nbf": now_unix()+600}),
            "secret",
        );
        assert_eq!(
            verifier("", "").verify_connect(&t).unwrap_err(),
            TokenError::Expired
        );
    }

    fn token(claims: serde_json::Value, secret: &str) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn valid_token_grants_user_info_and_channels() {
        let t = token(
            serde_json::json!({"sub":"alice","exp": now_unix()+60,"info":{"n":1},"channels":["news"]}),
            "secret",
        );
        let g = verifier("", "").verify_connect(&t).unwrap();
        assert_eq!(g.user, "alice");
        assert_eq!(&g.info[..], br#"{"n":1}"#);
        assert_eq!(g.channels, vec!["news".to_string()]);
    }

    #[test]
    fn expired_is_distinguished_from_invalid() {
        let t = token(serde_json::json!({"sub":"a","exp": now_unix()-5}), "secret");
        assert_eq!(
            verifier("", "").verify_connect(&t).unwrap_err(),
            TokenError::Expired
        );
        let t = token(serde_json::json!({"sub":"a"}), "other");
        assert!(matches!(
            verifier("", "").verify_connect(&t),
            Err(TokenError::Invalid(_))
        ));
    }

    #[test]
    fn audience_and_issuer_are_enforced() {
        let v = verifier("app", "auth.example");
        let ok = token(
            serde_json::json!({"sub":"a","aud":"app","iss":"auth.example"}),
            "secret",
        );
        assert!(v.verify_connect(&ok).is_ok());
        let wrong_aud = token(
            serde_json::json!({"sub":"a","aud":"x","iss":"auth.example"}),
            "secret",
        );
        assert!(v.verify_connect(&wrong_aud).is_err());
        let no_iss = token(serde_json::json!({"sub":"a","aud":"app"}), "secret");
        assert!(v.verify_connect(&no_iss).is_err());
    }

    #[test]
    fn alg_none_is_rejected() {
        use base64::Engine as _;
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let t = format!(
            "{}.{}.",
            e.encode(r#"{"alg":"none","typ":"JWT"}"#),
            e.encode(r#"{"sub":"a"}"#)
        );
        assert!(matches!(
            verifier("", "").verify_connect(&t),
            Err(TokenError::Invalid(_))
        ));
    }

    #[test]
    fn subscription_token_is_bound_to_user_and_channel() {
        let v = verifier("", "");
        let t = token(
            serde_json::json!({"sub":"alice","channel":"secret:room"}),
            "secret",
        );
        assert!(v.verify_subscribe(&t, "alice", "secret:room").is_ok());
        assert!(v.verify_subscribe(&t, "bob", "secret:room").is_err());
        assert!(v.verify_subscribe(&t, "alice", "secret:other").is_err());
    }

    #[test]
    fn subscription_token_cannot_connect() {
        let t = token(
            serde_json::json!({"sub":"alice","channel":"secret:room"}),
            "secret",
        );
        assert!(matches!(
            verifier("", "").verify_connect(&t),
            Err(TokenError::Invalid(_))
        ));
    }

    #[test]
    fn api_key_comparison() {
        assert!(api_key_matches("abc", "abc"));
        assert!(!api_key_matches("abc", "abd"));
        assert!(!api_key_matches("abc", "ab"));
    }
}
