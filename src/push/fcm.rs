//! The FCM sender: HTTP v1 API with an OAuth2 service-account token.
//!
//! `POST {endpoint}/v1/projects/{project_id}/messages:send` with
//! `{"message": {token, notification, data, android, apns, webpush}}`. Errors carry a
//! `google.firebase.fcm.v1.FcmError` detail whose `errorCode` decides the outcome:
//! UNREGISTERED, and INVALID_ARGUMENT about the token, remove the device;
//! QUOTA_EXCEEDED, UNAVAILABLE and INTERNAL are retried (after Retry-After when
//! present); a 401 for our access token renews it and retries; the rest are fatal.

use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::auth::{GoogleToken, ServiceAccount};
use super::message::merge_json;
use super::service::SetupError;
use super::template::{fit, PAYLOAD_LIMIT};
use super::{Notification, Provider, PushProvider, SendError};
use crate::config::FcmConfig;

const KNOWN_CODES: &[&str] = &[
    "UNSPECIFIED_ERROR",
    "INVALID_ARGUMENT",
    "UNREGISTERED",
    "SENDER_ID_MISMATCH",
    "QUOTA_EXCEEDED",
    "UNAVAILABLE",
    "INTERNAL",
    "THIRD_PARTY_AUTH_ERROR",
    "UNAUTHENTICATED",
    "PERMISSION_DENIED",
    "NOT_FOUND",
];

pub struct FcmSender {
    http: reqwest::Client,
    url: String,
    token: GoogleToken,
}

impl FcmSender {
    pub fn from_config(cfg: &FcmConfig) -> Result<FcmSender, SetupError> {
        const KEY: &str = "push.fcm.service_account_file";
        let text = std::fs::read_to_string(&cfg.service_account_file)
            .map_err(|e| SetupError::new(KEY, format!("{}: {e}", cfg.service_account_file)))?;
        let account: ServiceAccount = serde_json::from_str(&text)
            .map_err(|e| SetupError::new(KEY, format!("not a service account key: {e}")))?;
        if account.project_id.is_empty() || account.client_email.is_empty() {
            return Err(SetupError::new(KEY, "project_id and client_email required"));
        }
        let http = super::http::client("push.fcm.ca_file", &cfg.ca_file)?;
        let url = format!(
            "{}/v1/projects/{}/messages:send",
            cfg.endpoint.trim_end_matches('/'),
            account.project_id
        );
        Ok(FcmSender {
            token: GoogleToken::new(http.clone(), account)?,
            http,
            url,
        })
    }

    pub fn project_id(&self) -> &str {
        self.token.project_id()
    }
}

/// The parts of the message FCM counts against its 4096-byte limit.
fn counted_len(n: &Notification) -> usize {
    let v = json!({"notification": {"title": n.title, "body": n.body}, "data": n.data});
    serde_json::to_vec(&v).map_or(usize::MAX, |v| v.len())
}

/// The v1 `message` for one token.
pub fn message(token: &str, n: &Notification, now_secs: i64) -> Value {
    let alert = !n.title.is_empty() || !n.body.is_empty();
    let ttl = (n.expire_at - now_secs).max(0);
    let mut data = n.data.clone();
    if !n.id.is_empty() {
        data.insert("herald_id".into(), n.id.clone());
    }
    let mut m = Map::new();
    m.insert("token".into(), json!(token));
    if alert {
        m.insert(
            "notification".into(),
            json!({"title": n.title, "body": n.body}),
        );
    }
    if !data.is_empty() {
        m.insert("data".into(), json!(data));
    }
    let mut android = json!({
        "priority": if alert { "HIGH" } else { "NORMAL" },
        "ttl": format!("{ttl}s"),
    });
    let mut aps = Map::new();
    let mut apns_headers = Map::new();
    apns_headers.insert(
        "apns-priority".into(),
        json!(if alert { "10" } else { "5" }),
    );
    apns_headers.insert("apns-expiration".into(), json!(n.expire_at.to_string()));
    if let Some(c) = &n.collapse_id {
        android["collapse_key"] = json!(c);
        apns_headers.insert("apns-collapse-id".into(), json!(c));
    }
    if alert {
        let mut an = json!({});
        if let Some(c) = &n.collapse_id {
            an["tag"] = json!(c);
        }
        if let Some(b) = n.badge {
            an["notification_count"] = json!(b);
        }
        android["notification"] = an;
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
    m.insert("android".into(), android);
    m.insert(
        "apns".into(),
        json!({"headers": apns_headers, "payload": {"aps": aps}}),
    );
    m.insert(
        "webpush".into(),
        json!({"headers": {"TTL": ttl.to_string(), "Urgency": if alert { "high" } else { "normal" }}}),
    );
    let mut m = Value::Object(m);
    if let Some(over) = &n.fcm {
        merge_json(&mut m, over);
        // The recipient is ours: an override cannot redirect the message.
        m["token"] = json!(token);
    }
    m
}

#[derive(Deserialize, Default)]
struct ErrorReply {
    #[serde(default)]
    error: ErrorStatus,
}

#[derive(Deserialize, Default)]
struct ErrorStatus {
    #[serde(default)]
    message: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    details: Vec<Value>,
}

impl ErrorStatus {
    /// The FcmError `errorCode`, else the canonical `status`.
    fn code(&self) -> &str {
        self.details
            .iter()
            .filter(|d| d["@type"].as_str().is_some_and(|t| t.ends_with("FcmError")))
            .find_map(|d| d["errorCode"].as_str())
            .unwrap_or(&self.status)
    }

    /// Whether an INVALID_ARGUMENT is about the registration token (Google's example:
    /// "The registration token is not a valid FCM registration token"), not about
    /// another field of the message.
    fn about_token(&self) -> bool {
        let fields: Vec<&str> = self
            .details
            .iter()
            .filter_map(|d| d["fieldViolations"].as_array())
            .flatten()
            .filter_map(|v| v["field"].as_str())
            .collect();
        if !fields.is_empty() {
            return fields.iter().all(|f| *f == "message.token");
        }
        self.message
            .to_ascii_lowercase()
            .contains("registration token")
    }
}

/// Turns an FCM answer into an outcome; `Err(None)`-like renewals are signalled by the
/// UNAUTHENTICATED label.
fn classify(status: u16, err: &ErrorStatus, after: Option<Duration>) -> Result<(), SendError> {
    if (200..300).contains(&status) {
        return Ok(());
    }
    let code = err.code();
    let code = if status == 401 && code != "THIRD_PARTY_AUTH_ERROR" {
        "UNAUTHENTICATED"
    } else {
        code
    };
    let label = if KNOWN_CODES.contains(&code) {
        code.to_string()
    } else {
        format!("status_{status}")
    };
    match code {
        "UNREGISTERED" => Err(SendError::InvalidToken { reason: label }),
        "INVALID_ARGUMENT" if err.about_token() => Err(SendError::InvalidToken { reason: label }),
        "QUOTA_EXCEEDED" | "UNAVAILABLE" | "INTERNAL" | "UNAUTHENTICATED" => {
            Err(SendError::Retry {
                reason: label,
                after,
            })
        }
        _ if status == 429 || status >= 500 => Err(SendError::Retry {
            reason: label,
            after,
        }),
        _ => Err(SendError::Fatal { reason: label }),
    }
}

#[async_trait]
impl PushProvider for FcmSender {
    fn provider(&self) -> Provider {
        Provider::Fcm
    }

    async fn send(&self, token: &str, n: &Notification) -> Result<(), SendError> {
        let mut n = n.clone();
        if fit(&mut n, PAYLOAD_LIMIT, counted_len).is_err() {
            return Err(SendError::Fatal {
                reason: "PAYLOAD_TOO_LARGE".into(),
            });
        }
        let access = self.token.get().await?;
        let body = json!({"message": message(token, &n, super::now_ms() / 1000)});
        let resp = self
            .http
            .post(&self.url)
            .bearer_auth(&*access)
            .json(&body)
            .send()
            .await
            .map_err(|e| super::http::transport_error(&e))?;
        let status = resp.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(());
        }
        let after = super::http::retry_after(resp.headers());
        let reply: ErrorReply = resp.json().await.unwrap_or_default();
        if status == 401 {
            self.token.expire(&access).await;
        }
        classify(status, &reply.error, after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(v: Value) -> ErrorStatus {
        serde_json::from_value::<ErrorReply>(v).unwrap().error
    }

    #[test]
    fn outcomes_follow_googles_codes() {
        let unreg = err(
            json!({"error": {"code": 404, "status": "NOT_FOUND", "message": "Requested entity was not found.",
            "details": [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "UNREGISTERED"}]}}),
        );
        assert!(matches!(
            classify(404, &unreg, None),
            Err(SendError::InvalidToken { .. })
        ));
        let bad_token = err(json!({"error": {"code": 400, "status": "INVALID_ARGUMENT",
            "message": "The registration token is not a valid FCM registration token",
            "details": [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "INVALID_ARGUMENT"}]}}));
        assert!(matches!(
            classify(400, &bad_token, None),
            Err(SendError::InvalidToken { .. })
        ));
        let bad_field = err(json!({"error": {"code": 400, "status": "INVALID_ARGUMENT",
            "message": "Invalid value at 'message.data[0].value' (TYPE_STRING), 12",
            "details": [{"@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": [{"field": "message.data[0].value", "description": "x"}]}]}}));
        assert!(matches!(
            classify(400, &bad_field, None),
            Err(SendError::Fatal { .. })
        ));
        let quota = err(
            json!({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED",
            "details": [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "QUOTA_EXCEEDED"}]}}),
        );
        match classify(429, &quota, Some(Duration::from_secs(2))) {
            Err(SendError::Retry { after, reason }) => {
                assert_eq!(after, Some(Duration::from_secs(2)));
                assert_eq!(reason, "QUOTA_EXCEEDED");
            }
            other => panic!("{other:?}"),
        }
        let unavailable = err(json!({"error": {"code": 503, "status": "UNAVAILABLE"}}));
        assert!(matches!(
            classify(503, &unavailable, None),
            Err(SendError::Retry { .. })
        ));
        let expired = err(json!({"error": {"code": 401, "status": "UNAUTHENTICATED"}}));
        assert!(matches!(
            classify(401, &expired, None),
            Err(SendError::Retry { .. })
        ));
        let mismatch = err(json!({"error": {"code": 403, "status": "PERMISSION_DENIED",
            "details": [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "SENDER_ID_MISMATCH"}]}}));
        assert!(matches!(
            classify(403, &mismatch, None),
            Err(SendError::Fatal { .. })
        ));
    }

    #[test]
    fn message_carries_overrides_per_platform() {
        let n = Notification {
            id: "id-1".into(),
            title: "Alice".into(),
            body: "hi".into(),
            badge: Some(2),
            collapse_id: Some("chat:room".into()),
            expire_at: 1_000_100,
            fcm: Some(json!({"token": "evil", "android": {"priority": "NORMAL"}})),
            ..Default::default()
        };
        let m = message("tok", &n, 1_000_000);
        assert_eq!(m["token"], "tok");
        assert_eq!(m["notification"]["title"], "Alice");
        assert_eq!(m["data"]["herald_id"], "id-1");
        assert_eq!(m["android"]["ttl"], "100s");
        assert_eq!(m["android"]["priority"], "NORMAL");
        assert_eq!(m["android"]["collapse_key"], "chat:room");
        assert_eq!(m["android"]["notification"]["notification_count"], 2);
        assert_eq!(m["apns"]["payload"]["aps"]["badge"], 2);
        assert_eq!(m["apns"]["headers"]["apns-collapse-id"], "chat:room");
    }
}
