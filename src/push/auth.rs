//! Provider credentials: the APNs provider token (ES256 JWT signed with the team's .p8
//! key) and the FCM OAuth2 access token (from a service-account JWT assertion).

use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};

use super::service::SetupError;
use super::SendError;

/// Apple rejects provider tokens older than an hour and answers
/// TooManyProviderTokenUpdates to tokens renewed more often than every 20 minutes:
/// renew after 50.
const APNS_TOKEN_LIFETIME: Duration = Duration::from_secs(50 * 60);

#[derive(Serialize)]
struct ApnsClaims<'a> {
    iss: &'a str,
    iat: i64,
}

/// The APNs provider token, shared by every request until it is due for renewal.
pub(super) struct ApnsToken {
    key: EncodingKey,
    key_id: String,
    team_id: String,
    /// parking_lot Mutex: held only to clone or replace the token, never across await.
    cached: parking_lot::Mutex<Option<(Arc<str>, Instant)>>,
}

impl ApnsToken {
    pub fn new(pem: &[u8], key_id: &str, team_id: &str) -> Result<ApnsToken, SetupError> {
        let key = EncodingKey::from_ec_pem(pem).map_err(|e| {
            SetupError::new(
                "push.apns.key_file",
                format!("not a PKCS#8 P-256 key (.p8): {e}"),
            )
        })?;
        let t = ApnsToken {
            key,
            key_id: key_id.to_string(),
            team_id: team_id.to_string(),
            cached: parking_lot::Mutex::new(None),
        };
        // Sign once now so a key that cannot sign fails at start, not on every send.
        t.get()
            .map_err(|e| SetupError::new("push.apns.key_file", e))?;
        Ok(t)
    }

    /// The current token, renewed when it is 50 minutes old.
    pub fn get(&self) -> Result<Arc<str>, SendError> {
        let mut cached = self.cached.lock();
        if let Some((tok, at)) = cached.as_ref() {
            if at.elapsed() < APNS_TOKEN_LIFETIME {
                return Ok(tok.clone());
            }
        }
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.key_id.clone());
        let claims = ApnsClaims {
            iss: &self.team_id,
            iat: super::now_ms() / 1000,
        };
        let tok: Arc<str> = jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| SendError::Fatal {
                reason: format!("provider token: {e}"),
            })?
            .into();
        *cached = Some((tok.clone(), Instant::now()));
        Ok(tok)
    }

    /// Drops `token` after APNs called it expired, so the next send signs a new one.
    /// Comparing first keeps a burst of failures from renewing it more than once.
    pub fn expire(&self, token: &str) {
        let mut cached = self.cached.lock();
        if cached.as_ref().is_some_and(|(t, _)| &**t == token) {
            *cached = None;
        }
    }
}

/// The fields of a Google service account key file that Herald uses.
#[derive(Deserialize)]
pub(super) struct ServiceAccount {
    pub project_id: String,
    pub client_email: String,
    pub private_key: String,
    #[serde(default)]
    pub private_key_id: String,
    #[serde(default = "default_token_uri")]
    pub token_uri: String,
}

fn default_token_uri() -> String {
    "https://oauth2.googleapis.com/token".into()
}

#[derive(Serialize)]
struct AssertionClaims<'a> {
    iss: &'a str,
    scope: &'a str,
    aud: &'a str,
    iat: i64,
    exp: i64,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: u64,
}

const FCM_SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";

/// The FCM access token, fetched from the service account's token_uri and kept until
/// shortly before it expires.
pub(super) struct GoogleToken {
    http: reqwest::Client,
    account: ServiceAccount,
    key: EncodingKey,
    /// tokio Mutex, held across the fetch: concurrent sends wait for one fetch instead
    /// of each asking Google for a token.
    cached: tokio::sync::Mutex<Option<(Arc<str>, Instant)>>,
}

impl GoogleToken {
    pub fn new(http: reqwest::Client, account: ServiceAccount) -> Result<GoogleToken, SetupError> {
        let key = EncodingKey::from_rsa_pem(account.private_key.as_bytes()).map_err(|e| {
            SetupError::new(
                "push.fcm.service_account_file",
                format!("private_key is not an RSA PEM key: {e}"),
            )
        })?;
        Ok(GoogleToken {
            http,
            account,
            key,
            cached: tokio::sync::Mutex::new(None),
        })
    }

    pub fn project_id(&self) -> &str {
        &self.account.project_id
    }

    /// A valid access token, fetching a new one when none is left.
    pub async fn get(&self) -> Result<Arc<str>, SendError> {
        let mut cached = self.cached.lock().await;
        if let Some((tok, until)) = cached.as_ref() {
            if Instant::now() < *until {
                return Ok(tok.clone());
            }
        }
        let (tok, lifetime) = self.fetch().await?;
        // Renew a minute early (or halfway, for very short lifetimes) so a token never
        // expires in flight.
        let margin = Duration::from_secs(60).min(lifetime / 2);
        let tok: Arc<str> = tok.into();
        *cached = Some((tok.clone(), Instant::now() + lifetime - margin));
        Ok(tok)
    }

    /// Drops `token` after FCM refused it.
    pub async fn expire(&self, token: &str) {
        let mut cached = self.cached.lock().await;
        if cached.as_ref().is_some_and(|(t, _)| &**t == token) {
            *cached = None;
        }
    }

    async fn fetch(&self) -> Result<(String, Duration), SendError> {
        let now = super::now_ms() / 1000;
        let mut header = Header::new(Algorithm::RS256);
        if !self.account.private_key_id.is_empty() {
            header.kid = Some(self.account.private_key_id.clone());
        }
        let claims = AssertionClaims {
            iss: &self.account.client_email,
            scope: FCM_SCOPE,
            aud: &self.account.token_uri,
            iat: now,
            exp: now + 3600,
        };
        let assertion =
            jsonwebtoken::encode(&header, &claims, &self.key).map_err(|e| SendError::Fatal {
                reason: format!("oauth assertion: {e}"),
            })?;
        let resp = self
            .http
            .post(&self.account.token_uri)
            .form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                ("assertion", assertion.as_str()),
            ])
            .send()
            .await
            .map_err(|e| super::http::transport_error(&e))?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            tracing::warn!(%status, body = %body.chars().take(200).collect::<String>(), "fcm oauth token refused");
            return Err(if status.is_server_error() || status.as_u16() == 429 {
                SendError::Retry {
                    reason: "oauth_unavailable".into(),
                    after: None,
                }
            } else {
                SendError::Fatal {
                    reason: "oauth_refused".into(),
                }
            });
        }
        let t: TokenResponse = resp.json().await.map_err(|_| SendError::Retry {
            reason: "oauth_bad_response".into(),
            after: None,
        })?;
        let lifetime = Duration::from_secs(if t.expires_in == 0 {
            3600
        } else {
            t.expires_in
        });
        Ok((t.access_token, lifetime))
    }
}
