//! What is queued: a provider-neutral notification for one device token. Each sender
//! turns it into its provider's request.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Provider;

/// A notification as stored in the queue (JSON). Unknown fields are ignored when read
/// back, so an older queue survives an upgrade.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Notification {
    /// Unique per notification and stable across retries: the `apns-id`, and
    /// `herald_id` in FCM data, so an app can drop a duplicate of an at-least-once send.
    pub id: String,
    pub title: String,
    pub body: String,
    /// The app icon badge: the user's total unread count for chat pushes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub badge: Option<u64>,
    /// Custom key-values for the app (FCM data values are strings).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, String>,
    /// A newer notification with the same id replaces an older one on the device
    /// (`apns-collapse-id`, FCM `collapse_key` / `tag`): one per conversation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub collapse_id: Option<String>,
    /// Groups notifications in the notification centre (`thread-id`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thread_id: Option<String>,
    /// Unix seconds after which the provider should not deliver it any more.
    pub expire_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sound: Option<String>,
    /// Raw APNs headers and payload from `send_push_notification`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub apns: Option<ApnsOverride>,
    /// Raw FCM `message` fields from `send_push_notification`, merged over ours.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fcm: Option<Value>,
    /// When the publication that caused it was fanned out (unix ms), for the
    /// publish-to-push latency metric.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub published_ms: Option<i64>,
}

/// Provider-specific APNs parts given by a backend.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ApnsOverride {
    /// `apns-*` headers to set (others are ignored).
    pub headers: BTreeMap<String, String>,
    /// The whole JSON payload (with its `aps` dictionary), used as given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
}

/// A job to queue.
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    pub device_id: String,
    pub provider: Provider,
    pub token: String,
    pub notification: Notification,
}

/// A queued job.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// Opaque to the dispatcher, unique among jobs in the queue: the row id (SQLite),
    /// the stream entry and job ids (Redis).
    pub id: String,
    pub device_id: String,
    pub provider: Provider,
    pub token: String,
    pub notification: Notification,
    /// Sends already attempted.
    pub attempts: u32,
}

/// Merges `over` into `base`: objects key by key, anything else replaced.
pub fn merge_json(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(slot) => merge_json(slot, v),
                    None => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (slot, v) => *slot = v.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_is_deep() {
        let mut a = json!({"a": {"b": 1, "c": 2}, "d": 3});
        merge_json(&mut a, &json!({"a": {"b": 9}, "e": 4}));
        assert_eq!(a, json!({"a": {"b": 9, "c": 2}, "d": 3, "e": 4}));
    }

    #[test]
    fn notification_round_trips_and_tolerates_unknown_fields() {
        let n = Notification {
            id: "x".into(),
            title: "t".into(),
            badge: Some(3),
            ..Default::default()
        };
        let s = serde_json::to_string(&n).unwrap();
        assert_eq!(serde_json::from_str::<Notification>(&s).unwrap(), n);
        let old: Notification = serde_json::from_str(r#"{"id":"y","future":1}"#).unwrap();
        assert_eq!(old.id, "y");
    }
}
