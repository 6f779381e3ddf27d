//! Public keys from a JWKS endpoint (`auth.jwks_url`), chosen by a token's `kid`.
//!
//! The set is fetched at start, every `auth.jwks_refresh_interval`, and when a token
//! names a `kid` the cached set lacks (at most once per `auth.jwks_min_refetch`, so a
//! stream of forged kids cannot turn Herald into a request amplifier). A kid still
//! unknown after that is an invalid token. Until the first fetch succeeds, tokens with a
//! kid get a temporary error instead: the SDK retries rather than giving up.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey};

use crate::metrics as m;

/// A JWKS document larger than this is refused (a real one is a few kilobytes).
const MAX_BODY: usize = 1 << 20;
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Which token algorithms a key can verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Rsa,
    P256,
    P384,
}

impl Family {
    fn accepts(self, alg: Algorithm) -> bool {
        matches!(
            (self, alg),
            (
                Family::Rsa,
                Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512
            ) | (Family::P256, Algorithm::ES256)
                | (Family::P384, Algorithm::ES384)
        )
    }
}

#[derive(Clone)]
struct Key {
    key: DecodingKey,
    family: Family,
    /// The JWK's own `alg`, when it pins one.
    alg: Option<Algorithm>,
}

/// The outcome of looking a kid up.
pub enum Lookup {
    Found(DecodingKey),
    /// The set is loaded and has no usable key with this kid for this algorithm.
    Unknown,
    /// No set was ever fetched successfully.
    NotLoaded,
}

pub struct Jwks {
    url: String,
    http: reqwest::Client,
    /// `None` until the first successful fetch. parking_lot: held for a map lookup or
    /// a swap, never across `.await`.
    keys: parking_lot::RwLock<Option<HashMap<String, Key>>>,
    /// When the last fetch started; a tokio mutex so concurrent unknown kids wait for
    /// one fetch instead of each starting their own.
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
    min_refetch: Duration,
}

fn pinned_alg(a: &KeyAlgorithm) -> Option<Algorithm> {
    Some(match a {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        // Any other pinned algorithm is one Herald does not verify with this key.
        _ => Algorithm::HS256,
    })
}

/// The signature keys of a JWKS document by kid. Keys of other types, encryption
/// keys and keys without a kid are skipped, so one odd key never hides the others.
fn parse_set(body: &[u8]) -> Result<HashMap<String, Key>, String> {
    #[derive(serde::Deserialize)]
    struct Doc {
        keys: Vec<serde_json::Value>,
    }
    let doc: Doc = serde_json::from_slice(body).map_err(|e| format!("not a JWKS: {e}"))?;
    let mut out = HashMap::new();
    for v in doc.keys {
        let Ok(jwk) = serde_json::from_value::<Jwk>(v) else {
            continue;
        };
        let Some(kid) = jwk.common.key_id.clone() else {
            continue;
        };
        if jwk
            .common
            .public_key_use
            .as_ref()
            .is_some_and(|u| !matches!(u, jsonwebtoken::jwk::PublicKeyUse::Signature))
        {
            continue;
        }
        let family = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Family::Rsa,
            AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Family::P256,
            AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P384 => Family::P384,
            _ => continue,
        };
        let Ok(key) = DecodingKey::from_jwk(&jwk) else {
            continue;
        };
        let alg = jwk.common.key_algorithm.as_ref().and_then(pinned_alg);
        out.insert(kid, Key { key, family, alg });
    }
    Ok(out)
}

impl Jwks {
    pub fn new(url: &str, min_refetch: Duration) -> Result<Jwks, String> {
        let http = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .build()
            .map_err(|e| format!("auth.jwks_url: {e}"))?;
        Ok(Jwks {
            url: url.to_string(),
            http,
            keys: parking_lot::RwLock::new(None),
            last_fetch: tokio::sync::Mutex::new(None),
            min_refetch,
        })
    }

    /// The key for `kid` that may verify `alg`.
    pub fn lookup(&self, kid: &str, alg: Algorithm) -> Lookup {
        let keys = self.keys.read();
        let Some(keys) = keys.as_ref() else {
            return Lookup::NotLoaded;
        };
        match keys.get(kid) {
            Some(k) if k.family.accepts(alg) && k.alg.is_none_or(|a| a == alg) => {
                Lookup::Found(k.key.clone())
            }
            _ => Lookup::Unknown,
        }
    }

    /// Fetches the set now and replaces the cached one; a failed fetch keeps the old.
    pub async fn refresh(&self) -> Result<usize, String> {
        let mut last = self.last_fetch.lock().await;
        *last = Some(Instant::now());
        self.fetch().await
    }

    /// A token named a kid the set lacks: fetch again unless a fetch started less than
    /// `min_refetch` ago (or one just finished while this call waited for it).
    pub async fn refresh_for_unknown_kid(&self, kid: &str, alg: Algorithm) {
        let mut last = self.last_fetch.lock().await;
        if !matches!(self.lookup(kid, alg), Lookup::Unknown | Lookup::NotLoaded) {
            return;
        }
        if last.is_some_and(|t| t.elapsed() < self.min_refetch) {
            return;
        }
        *last = Some(Instant::now());
        if let Err(e) = self.fetch().await {
            tracing::warn!(cause = %e, "jwks refresh failed");
        }
    }

    async fn fetch(&self) -> Result<usize, String> {
        let result = self.fetch_once().await;
        let label = if result.is_ok() { "ok" } else { "error" };
        metrics::counter!(m::JWKS_FETCHES_TOTAL, "result" => label).increment(1);
        let keys = result?;
        let n = keys.len();
        *self.keys.write() = Some(keys);
        Ok(n)
    }

    async fn fetch_once(&self) -> Result<HashMap<String, Key>, String> {
        let mut resp = self
            .http
            .get(&self.url)
            .send()
            .await
            .map_err(|e| format!("fetch {}: {e}", self.url))?;
        if !resp.status().is_success() {
            return Err(format!("fetch {}: HTTP {}", self.url, resp.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(format!("{}: document over {MAX_BODY} bytes", self.url));
            }
            body.extend_from_slice(&chunk);
        }
        parse_set(&body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_keys_are_skipped_and_families_enforced() {
        let body = br#"{"keys":[
            {"kty":"oct","kid":"h","k":"c2VjcmV0"},
            {"kty":"EC","crv":"P-256","kid":"e","use":"sig",
             "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty":"EC","crv":"P-256","kid":"enc","use":"enc",
             "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty":"XYZ","kid":"z"},
            {"kty":"EC","crv":"P-256",
             "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}
        ]}"#;
        let keys = parse_set(body).unwrap();
        assert_eq!(keys.keys().collect::<Vec<_>>(), vec!["e"]);
        assert!(keys["e"].family.accepts(Algorithm::ES256));
        assert!(!keys["e"].family.accepts(Algorithm::RS256));
        assert!(!keys["e"].family.accepts(Algorithm::HS256));
        assert!(parse_set(b"[]").is_err());
    }
}
