//! Devices: who gets pushes, through which provider, with which token.
//!
//! The shapes follow Centrifugo PRO's push API (`device_register`, `device_update`,
//! `device_remove`, `device_list`) so that backends written for it need few changes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Where a push goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Apns,
    Fcm,
}

impl Provider {
    pub const ALL: [Provider; 2] = [Provider::Apns, Provider::Fcm];

    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Apns => "apns",
            Provider::Fcm => "fcm",
        }
    }

    pub fn parse(s: &str) -> Option<Provider> {
        match s {
            "apns" => Some(Provider::Apns),
            "fcm" => Some(Provider::Fcm),
            _ => None,
        }
    }
}

/// What the app runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    Ios,
    Android,
    Web,
}

impl Platform {
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Ios => "ios",
            Platform::Android => "android",
            Platform::Web => "web",
        }
    }

    pub fn parse(s: &str) -> Option<Platform> {
        match s {
            "ios" => Some(Platform::Ios),
            "android" => Some(Platform::Android),
            "web" => Some(Platform::Web),
            _ => None,
        }
    }

    /// The provider a platform uses when the registration names none: APNs for iOS,
    /// FCM for Android and web (an iOS app built on the Firebase SDK registers with
    /// `provider: "fcm"`).
    pub fn default_provider(self) -> Provider {
        match self {
            Platform::Ios => Provider::Apns,
            Platform::Android | Platform::Web => Provider::Fcm,
        }
    }
}

/// A registered device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Device {
    pub id: String,
    pub user: String,
    pub provider: Provider,
    pub platform: Platform,
    pub token: String,
    pub topics: Vec<String>,
    pub meta: BTreeMap<String, String>,
    /// Unix milliseconds.
    pub created_at: i64,
    pub updated_at: i64,
}

/// A registration: `id` empty for a new device.
#[derive(Debug, Clone, PartialEq)]
pub struct NewDevice {
    pub id: String,
    pub user: String,
    pub provider: Provider,
    pub platform: Platform,
    pub token: String,
    pub topics: Vec<String>,
    pub meta: BTreeMap<String, String>,
}

/// Selects devices; an empty list places no condition.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeviceFilter {
    pub ids: Vec<String>,
    pub users: Vec<String>,
    pub topics: Vec<String>,
    pub providers: Vec<Provider>,
    pub platforms: Vec<Platform>,
}

impl DeviceFilter {
    /// True when no condition is set (it would match every device).
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
            && self.users.is_empty()
            && self.topics.is_empty()
            && self.providers.is_empty()
            && self.platforms.is_empty()
    }
}

/// How `device_update` changes topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TopicsOp {
    Add,
    Remove,
    Set,
}

/// Changes made by `device_update`; `None` leaves a field alone.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeviceUpdate {
    pub user: Option<String>,
    pub meta: Option<BTreeMap<String, String>>,
    pub topics: Option<(TopicsOp, Vec<String>)>,
}

/// A page of `device_list`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DevicePage {
    pub items: Vec<Device>,
    /// The id to pass as `cursor` for the next page; empty on the last page.
    pub next_cursor: String,
    pub total: Option<u64>,
}

/// A registration request, as the server API (`device_register`) and the client RPC
/// (`push.register`) take it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RegisterReq {
    /// Set to update a registered device (for instance with a new token).
    pub id: String,
    /// `apns` or `fcm`; defaults from the platform.
    pub provider: Option<String>,
    /// `ios`, `android` or `web`.
    pub platform: String,
    pub token: String,
    /// The server API names the user; the client RPC uses the connection's.
    pub user: String,
    pub topics: Vec<String>,
    pub meta: BTreeMap<String, String>,
}

/// Longest topic name, and most topics per device.
const MAX_TOPIC_LEN: usize = 255;
const MAX_TOPICS: usize = 256;

impl RegisterReq {
    /// Checks the request and turns it into a registration for `user`.
    pub fn into_device(self, user: String) -> Result<NewDevice, String> {
        let platform =
            Platform::parse(&self.platform).ok_or("platform must be one of ios, android, web")?;
        let provider = match self.provider.as_deref() {
            None | Some("") => platform.default_provider(),
            Some(p) => Provider::parse(p).ok_or("provider must be apns or fcm")?,
        };
        check_token(provider, &self.token)?;
        if self.topics.len() > MAX_TOPICS
            || self
                .topics
                .iter()
                .any(|t| t.is_empty() || t.len() > MAX_TOPIC_LEN)
        {
            return Err("topics: at most 256 names of 1..=255 characters".into());
        }
        if self.id.len() > MAX_TOPIC_LEN {
            return Err("id too long".into());
        }
        Ok(NewDevice {
            id: self.id,
            user,
            provider,
            platform,
            token: self.token,
            topics: self.topics,
            meta: self.meta,
        })
    }
}

/// Longest token accepted (FCM tokens are ~160 characters, APNs tokens 64 hex digits).
pub const MAX_TOKEN_LEN: usize = 4096;

/// Checks a token's form for its provider: APNs tokens are hex digits (Apple documents
/// them as opaque bytes, sent as hex); FCM tokens are printable ASCII without spaces.
pub fn check_token(provider: Provider, token: &str) -> Result<(), &'static str> {
    if token.is_empty() || token.len() > MAX_TOKEN_LEN {
        return Err("token must be 1..=4096 characters");
    }
    match provider {
        Provider::Apns => {
            if !token.len().is_multiple_of(2) || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err("an APNs device token is an even number of hex digits");
            }
        }
        Provider::Fcm => {
            if !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err("an FCM registration token is printable ASCII without spaces");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked_per_provider() {
        assert!(check_token(Provider::Apns, &"ab".repeat(32)).is_ok());
        assert!(check_token(Provider::Apns, "xyz").is_err());
        assert!(check_token(Provider::Apns, "abc").is_err());
        assert!(check_token(Provider::Fcm, "fcm:token-1_A").is_ok());
        assert!(check_token(Provider::Fcm, "has space").is_err());
        assert!(check_token(Provider::Fcm, "").is_err());
    }

    #[test]
    fn platforms_pick_providers() {
        assert_eq!(Platform::Ios.default_provider(), Provider::Apns);
        assert_eq!(Platform::Web.default_provider(), Provider::Fcm);
        assert_eq!(Platform::parse("android"), Some(Platform::Android));
        assert_eq!(Provider::parse("apns"), Some(Provider::Apns));
        assert_eq!(Provider::parse("hms"), None);
    }
}
