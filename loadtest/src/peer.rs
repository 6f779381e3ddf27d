//! The servers herald-loadtest can drive, and each one's minimal protocol: the WebSocket
//! URL a subscriber opens, what it says after the handshake to be subscribed, how it
//! answers keep-alives, and the HTTP request that publishes.
//!
//! | server | subscribe | publish |
//! |---|---|---|
//! | herald | `/connection/websocket`, Centrifugo `connect` (JWT) + `subscribe` | `POST /api/publish` (`X-API-Key`) |
//! | nchan | `/sub/<channel>` (nginx + nchan, subscribed on open) | `POST /pub/<channel>` |
//! | pushpin | `/ws/<channel>` (the origin subscribes the socket over GRIP) | `POST :<publish port>/publish/` |
//! | soketi | `/app/<key>`, Pusher `pusher:subscribe` | `POST /apps/<id>/events` (signed) |
//! | socketio | `/socket.io/?EIO=4&transport=websocket`, `40`, `421["subscribe",c]` | `POST /publish` (tiny server) |

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Peer {
    Herald,
    Nchan,
    Pushpin,
    Soketi,
    Socketio,
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Peer {
    pub fn name(self) -> &'static str {
        match self {
            Peer::Herald => "herald",
            Peer::Nchan => "nchan",
            Peer::Pushpin => "pushpin",
            Peer::Soketi => "soketi",
            Peer::Socketio => "socketio",
        }
    }
}

/// How to reach one server: its WebSocket base, its publish base and credentials.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerConf {
    pub peer: Peer,
    /// `ws://host:port` (a path, if any, is ignored except for herald's full URL).
    pub ws_base: String,
    /// `http://host:port` of the publish endpoint.
    pub publish_base: String,
    /// Herald's API key (`X-API-Key`).
    pub api_key: String,
    /// Pusher (soketi) application.
    pub pusher_app_id: String,
    pub pusher_key: String,
    pub pusher_secret: String,
}

/// `ws://host:port` of a URL, dropping any path.
pub fn origin_of(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("ws", url));
    let authority = rest.split('/').next().unwrap_or(rest);
    format!("{scheme}://{authority}")
}

impl PeerConf {
    /// The WebSocket URL a subscriber to `channel` opens.
    pub fn ws_url(&self, channel: &str) -> String {
        let base = origin_of(&self.ws_base);
        match self.peer {
            Peer::Herald => format!("{base}/connection/websocket"),
            Peer::Nchan => format!("{base}/sub/{channel}"),
            Peer::Pushpin => format!("{base}/ws/{channel}"),
            Peer::Soketi => format!(
                "{base}/app/{}?protocol=7&client=herald-loadtest&version=1.0",
                self.pusher_key
            ),
            Peer::Socketio => format!("{base}/socket.io/?EIO=4&transport=websocket"),
        }
    }

    /// Method-less description of the publish request for `channel` carrying the JSON
    /// object `payload`: URL, extra headers and body.
    pub fn publish_request(&self, channel: &str, payload: &str) -> HttpRequest {
        let base = origin_of(&self.publish_base);
        match self.peer {
            Peer::Herald => HttpRequest {
                url: format!("{base}/api/publish"),
                headers: vec![("X-API-Key", self.api_key.clone())],
                body: format!("{{\"channel\":{},\"data\":{payload}}}", json_str(channel)),
            },
            Peer::Nchan => HttpRequest {
                url: format!("{base}/pub/{channel}"),
                headers: vec![],
                body: payload.to_owned(),
            },
            Peer::Pushpin => HttpRequest {
                url: format!("{base}/publish/"),
                headers: vec![],
                body: format!(
                    "{{\"items\":[{{\"channel\":{},\"formats\":{{\"ws-message\":{{\"content\":{}}}}}}}]}}",
                    json_str(channel),
                    json_str(payload)
                ),
            },
            Peer::Soketi => {
                let body = format!(
                    "{{\"name\":\"m\",\"channel\":{},\"data\":{}}}",
                    json_str(channel),
                    json_str(payload)
                );
                let path = format!("/apps/{}/events", self.pusher_app_id);
                let ts = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let query = pusher_query(&self.pusher_key, &self.pusher_secret, &path, ts, &body);
                HttpRequest {
                    url: format!("{base}{path}?{query}"),
                    headers: vec![],
                    body,
                }
            }
            Peer::Socketio => HttpRequest {
                url: format!("{base}/publish"),
                headers: vec![],
                body: format!("{{\"channel\":{},\"data\":{payload}}}", json_str(channel)),
            },
        }
    }

    /// The reply to a keep-alive in text frame `frame`, if it is one.
    pub fn keepalive_reply(&self, frame: &str) -> Option<&'static str> {
        match self.peer {
            // Centrifugo v2 JSON: a server ping is `{}`, alone or among batched pushes.
            Peer::Herald => frame.lines().any(|l| l == "{}").then_some("{}"),
            Peer::Socketio => (frame == "2").then_some("3"),
            Peer::Soketi => frame
                .contains("\"pusher:ping\"")
                .then_some(r#"{"event":"pusher:pong","data":{}}"#),
            // WebSocket ping frames, which the WebSocket library answers.
            Peer::Nchan | Peer::Pushpin => None,
        }
    }

    /// How many replies in text frame `frame` report an error (herald's
    /// publish reply in the chat scenario).
    pub fn error_replies(&self, frame: &str) -> usize {
        match self.peer {
            Peer::Herald => frame
                .lines()
                .filter(|l| l.starts_with("{\"id\":") && l.contains("\"error\":"))
                .count(),
            _ => 0,
        }
    }
}

/// An HTTP POST to make.
#[derive(Debug, Clone)]
pub struct HttpRequest {
    pub url: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

/// `s` as a JSON string literal.
pub fn json_str(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The signed query string of a Pusher HTTP API request (auth version 1.0): the
/// parameters sorted by name, signed with HMAC-SHA256 over `POST\n<path>\n<query>`.
pub fn pusher_query(key: &str, secret: &str, path: &str, ts: u64, body: &str) -> String {
    let body_md5 = hex(&Md5::digest(body.as_bytes()));
    let query = format!("auth_key={key}&auth_timestamp={ts}&auth_version=1.0&body_md5={body_md5}");
    let to_sign = format!("POST\n{path}\n{query}");
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(to_sign.as_bytes());
    let sig = hex(&mac.finalize().into_bytes());
    format!("{query}&auth_signature={sig}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(peer: Peer) -> PeerConf {
        PeerConf {
            peer,
            ws_base: "ws://127.0.0.1:9000/connection/websocket".into(),
            publish_base: "http://127.0.0.1:9001".into(),
            api_key: "k".into(),
            pusher_app_id: "app".into(),
            pusher_key: "key".into(),
            pusher_secret: "secret".into(),
        }
    }

    #[test]
    fn urls_per_peer() {
        assert_eq!(
            conf(Peer::Herald).ws_url("c"),
            "ws://127.0.0.1:9000/connection/websocket"
        );
        assert_eq!(conf(Peer::Nchan).ws_url("c"), "ws://127.0.0.1:9000/sub/c");
        assert_eq!(
            conf(Peer::Nchan).publish_request("c", "{}").url,
            "http://127.0.0.1:9001/pub/c"
        );
        let p = conf(Peer::Pushpin).publish_request("c", r#"{"t":1}"#);
        let v: serde_json::Value = serde_json::from_str(&p.body).expect("json");
        assert_eq!(
            v["items"][0]["formats"]["ws-message"]["content"],
            r#"{"t":1}"#
        );
        let h = conf(Peer::Herald).publish_request("c", r#"{"t":1}"#);
        assert_eq!(h.body, r#"{"channel":"c","data":{"t":1}}"#);
        assert_eq!(h.headers, vec![("X-API-Key", "k".to_owned())]);
    }

    #[test]
    fn pusher_signature_matches_reference() {
        // The worked example of the Pusher HTTP API documentation (auth version 1.0).
        let q = pusher_query(
            "278d425bdf160c739803",
            "7ad3773142a6692b25b8",
            "/apps/3/events",
            1353088179,
            r#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#,
        );
        assert!(
            q.contains("body_md5=ec365a775a4cd0599faeb73354201b6f"),
            "{q}"
        );
        assert!(
            q.ends_with(
                "auth_signature=da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c"
            ),
            "{q}"
        );
    }

    #[test]
    fn keepalives() {
        assert_eq!(conf(Peer::Herald).keepalive_reply("{}"), Some("{}"));
        assert_eq!(
            conf(Peer::Herald).keepalive_reply("{\"push\":{}}\n{}"),
            Some("{}")
        );
        assert_eq!(conf(Peer::Herald).keepalive_reply("{\"push\":{}}"), None);
        assert_eq!(conf(Peer::Socketio).keepalive_reply("2"), Some("3"));
        assert!(conf(Peer::Soketi)
            .keepalive_reply(r#"{"event":"pusher:ping","data":{}}"#)
            .is_some());
        assert_eq!(
            conf(Peer::Herald)
                .error_replies("{\"id\":3,\"error\":{\"code\":103}}\n{\"id\":4,\"publish\":{}}"),
            1
        );
    }
}
