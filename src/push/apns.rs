//! The APNs sender: HTTP/2 provider API with token authentication.
//!
//! `POST {endpoint}/3/device/{token}` with a JSON payload of at most 4 KB and the
//! headers Apple documents (`authorization: bearer <ES256 JWT>`, `apns-topic`,
//! `apns-push-type`, `apns-priority`, `apns-expiration`, `apns-id`, `apns-collapse-id`).
//! The answer is turned into a typed outcome: 200 delivered; 410 Unregistered and 400
//! BadDeviceToken / DeviceTokenNotForTopic remove the device; 429 and 5xx are retried
//! (after Retry-After when present); 403 ExpiredProviderToken renews the token and
//! retries; anything else is fatal for that notification.

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::auth::ApnsToken;
use super::service::SetupError;
use super::template::{fit, PAYLOAD_LIMIT};
use super::{Notification, Provider, PushProvider, SendError};
use crate::config::ApnsConfig;

pub const PRODUCTION: &str = "https://api.push.apple.com";
pub const SANDBOX: &str = "https://api.sandbox.push.apple.com";

/// Reasons Apple documents; any other is reported as `status_<code>` so that metric
/// labels stay a bounded set.
const KNOWN_REASONS: &[&str] = &[
    "BadCollapseId",
    "BadDeviceToken",
    "BadExpirationDate",
    "BadMessageId",
    "BadPriority",
    "BadTopic",
    "DeviceTokenNotForTopic",
    "DuplicateHeaders",
    "IdleTimeout",
    "InvalidPushType",
    "MissingDeviceToken",
    "MissingTopic",
    "PayloadEmpty",
    "TopicDisallowed",
    "BadCertificate",
    "BadCertificateEnvironment",
    "ExpiredProviderToken",
    "Forbidden",
    "InvalidProviderToken",
    "MissingProviderToken",
    "BadPath",
    "MethodNotAllowed",
    "ExpiredToken",
    "Unregistered",
    "PayloadTooLarge",
    "TooManyProviderTokenUpdates",
    "TooManyRequests",
    "InternalServerError",
    "ServiceUnavailable",
    "Shutdown",
];

pub struct ApnsSender {
    http: reqwest::Client,
    base: String,
    topic: String,
    token: ApnsToken,
}

#[derive(Deserialize, Default)]
struct ErrorBody {
    #[serde(default)]
    reason: String,
}

impl ApnsSender {
    pub fn from_config(cfg: &ApnsConfig) -> Result<ApnsSender, SetupError> {
        let pem = std::fs::read(&cfg.key_file)
            .map_err(|e| SetupError::new("push.apns.key_file", format!("{}: {e}", cfg.key_file)))?;
        let base = match cfg.endpoint.as_str() {
            "production" => PRODUCTION.to_string(),
            "sandbox" => SANDBOX.to_string(),
            url => url.trim_end_matches('/').to_string(),
        };
        Ok(ApnsSender {
            http: super::http::client("push.apns.ca_file", &cfg.ca_file)?,
            base,
            topic: cfg.topic.clone(),
            token: ApnsToken::new(&pem, &cfg.key_id, &cfg.team_id)?,
        })
    }
}

/// The JSON payload: `aps` with the alert, badge, sound and thread, and the custom data
/// at the top level (Apple's place for app keys). A backend's raw payload wins.
pub fn payload(n: &Notification) -> Value {
    if let Some(p) = n.apns.as_ref().and_then(|a| a.payload.as_ref()) {
        return p.clone();
    }
    let mut aps = Map::new();
    if !n.title.is_empty() || !n.body.is_empty() {
        let mut alert = Map::new();
        if !n.title.is_empty() {
            alert.insert("title".into(), json!(n.title));
        }
        if !n.body.is_empty() {
            alert.insert("body".into(), json!(n.body));
        }
        aps.insert("alert".into(), Value::Object(alert));
        aps.insert(
            "sound".into(),
            json!(n.sound.as_deref().unwrap_or("default")),
        );
    } else {
        aps.insert("content-available".into(), json!(1));
    }
    if let Some(b) = n.badge {
        aps.insert("badge".into(), json!(b));
    }
    if let Some(t) = &n.thread_id {
        aps.insert("thread-id".into(), json!(t));
    }
    let mut root = Map::new();
    for (k, v) in &n.data {
        if k != "aps" {
            root.insert(k.clone(), json!(v));
        }
    }
    root.insert("aps".into(), Value::Object(aps));
    Value::Object(root)
}

fn encoded_len(n: &Notification) -> usize {
    serde_json::to_vec(&payload(n)).map_or(usize::MAX, |v| v.len())
}

/// Alerts go out with priority 10; a payload without an alert is a background update,
/// which Apple requires at priority 5.
fn push_type(payload: &Value) -> (&'static str, &'static str) {
    let alert = payload
        .get("aps")
        .and_then(|a| a.get("alert"))
        .is_some_and(|a| !a.is_null());
    if alert {
        ("alert", "10")
    } else {
        ("background", "5")
    }
}

/// Turns an APNs answer into an outcome.
fn classify(
    status: u16,
    reason: &str,
    after: Option<std::time::Duration>,
) -> Result<(), SendError> {
    let label = if KNOWN_REASONS.contains(&reason) {
        reason.to_string()
    } else {
        format!("status_{status}")
    };
    match (status, reason) {
        (200, _) => Ok(()),
        (410, _) | (400, "BadDeviceToken") | (400, "DeviceTokenNotForTopic") => {
            Err(SendError::InvalidToken { reason: label })
        }
        (403, "ExpiredProviderToken") | (429, _) | (500..=599, _) => Err(SendError::Retry {
            reason: label,
            after,
        }),
        _ => Err(SendError::Fatal { reason: label }),
    }
}

#[async_trait]
impl PushProvider for ApnsSender {
    fn provider(&self) -> Provider {
        Provider::Apns
    }

    async fn send(&self, token: &str, n: &Notification) -> Result<(), SendError> {
        let mut n = n.clone();
        if fit(&mut n, PAYLOAD_LIMIT, encoded_len).is_err() {
            return Err(SendError::Fatal {
                reason: "PayloadTooLarge".into(),
            });
        }
        let body = payload(&n);
        let (kind, priority) = push_type(&body);
        let bytes = serde_json::to_vec(&body).map_err(|_| SendError::Fatal {
            reason: "encode".into(),
        })?;
        let jwt = self.token.get()?;
        let mut req = self
            .http
            .post(format!("{}/3/device/{token}", self.base))
            .header("authorization", format!("bearer {jwt}"))
            .header("apns-topic", &self.topic)
            .header("apns-push-type", kind)
            .header("apns-priority", priority)
            .header("apns-expiration", n.expire_at.max(0).to_string())
            .header("content-type", "application/json");
        if uuid::Uuid::parse_str(&n.id).is_ok() {
            req = req.header("apns-id", &n.id);
        }
        if let Some(c) = &n.collapse_id {
            req = req.header("apns-collapse-id", c);
        }
        if let Some(o) = &n.apns {
            for (k, v) in &o.headers {
                let k = k.to_ascii_lowercase();
                if k.starts_with("apns-") && k != "apns-topic" {
                    req = req.header(k, v);
                }
            }
        }
        let resp = req
            .body(bytes)
            .send()
            .await
            .map_err(|e| super::http::transport_error(&e))?;
        let status = resp.status().as_u16();
        if status == 200 {
            return Ok(());
        }
        let after = super::http::retry_after(resp.headers());
        let err: ErrorBody = resp.json().await.unwrap_or_default();
        if err.reason == "ExpiredProviderToken" {
            self.token.expire(&jwt);
        }
        classify(status, &err.reason, after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn outcomes_follow_apples_table() {
        assert!(classify(200, "", None).is_ok());
        assert!(matches!(
            classify(410, "Unregistered", None),
            Err(SendError::InvalidToken { .. })
        ));
        assert!(matches!(
            classify(400, "BadDeviceToken", None),
            Err(SendError::InvalidToken { .. })
        ));
        assert!(matches!(
            classify(400, "BadTopic", None),
            Err(SendError::Fatal { .. })
        ));
        match classify(429, "TooManyRequests", Some(Duration::from_secs(3))) {
            Err(SendError::Retry { after, reason }) => {
                assert_eq!(after, Some(Duration::from_secs(3)));
                assert_eq!(reason, "TooManyRequests");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            classify(503, "weird", None),
            Err(SendError::Retry { reason, .. }) if reason == "status_503"
        ));
        assert!(matches!(
            classify(403, "ExpiredProviderToken", None),
            Err(SendError::Retry { .. })
        ));
        assert!(matches!(
            classify(403, "InvalidProviderToken", None),
            Err(SendError::Fatal { .. })
        ));
    }

    #[test]
    fn payload_has_aps_and_custom_keys() {
        let n = Notification {
            title: "Alice".into(),
            body: "hi".into(),
            badge: Some(4),
            thread_id: Some("chat:room".into()),
            data: [("channel".to_string(), "chat:room".to_string())].into(),
            ..Default::default()
        };
        let p = payload(&n);
        assert_eq!(p["aps"]["alert"]["title"], "Alice");
        assert_eq!(p["aps"]["badge"], 4);
        assert_eq!(p["aps"]["thread-id"], "chat:room");
        assert_eq!(p["channel"], "chat:room");
        assert_eq!(push_type(&p), ("alert", "10"));
        let silent = payload(&Notification {
            badge: Some(0),
            ..Default::default()
        });
        assert_eq!(push_type(&silent), ("background", "5"));
    }
}
