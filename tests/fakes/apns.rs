//! A fake APNs provider API: `POST /3/device/<token>` over HTTP/2 with token auth.
//!
//! Checked as Apple documents it ("Sending notification requests to APNs",
//! "Establishing a token-based connection to APNs", "Handling notification responses"):
//! HTTP/2; `authorization: bearer <JWT>` with header `alg` ES256 and `kid` = the key
//! id, claims `iss` = the team id and `iat` within the last hour, signed by the team's
//! key; `apns-topic` = the bundle id; `apns-push-type` one of Apple's values (alert
//! needs `aps.alert`, background needs `content-available` and priority 5);
//! `apns-priority` 10, 5 or 1; `apns-expiration` a unix time; `apns-id` a canonical
//! UUID; `apns-collapse-id` at most 64 bytes; no repeated `apns-*` header; the token hex;
//! a JSON payload with an `aps` dictionary of at most 4096 bytes.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use parking_lot::Mutex;
use serde_json::{json, Value};

use super::tls::{empty_response, json_response, Handler, Req, TestCa};
use super::{Accepted, Log, Reply, Seen};

pub const KEY_ID: &str = "ABC123DEFG";
pub const TEAM_ID: &str = "DEF123GHIJ";
pub const TOPIC: &str = "com.example.herald";
const PUSH_TYPES: &[&str] = &[
    "alert",
    "background",
    "location",
    "voip",
    "complication",
    "fileprovider",
    "mdm",
    "liveactivity",
    "pushtotalk",
    "widgets",
];

pub struct FakeApns {
    pub addr: SocketAddr,
    /// Base URL for `push.apns.endpoint`.
    pub url: String,
    /// The `.p8` key file for `push.apns.key_file`.
    pub key_file: PathBuf,
    pub ca_file: PathBuf,
    pub log: Arc<Log>,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

struct State {
    key: DecodingKey,
    log: Arc<Log>,
    /// Distinct provider tokens seen: Herald must reuse one, not sign one per request.
    jwts: Mutex<HashSet<String>>,
}

impl Drop for FakeApns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeApns {
    /// Starts on a fresh port, writing its CA and a new P-256 team key into `dir`.
    pub async fn start(dir: &std::path::Path) -> FakeApns {
        let ca = TestCa::new(dir);
        let key = rcgen::KeyPair::generate().expect("p256 key");
        let key_file = dir.join(format!("AuthKey_{KEY_ID}.p8"));
        std::fs::write(&key_file, key.serialize_pem()).expect("write p8");
        let log = Arc::new(Log::default());
        let state = Arc::new(State {
            key: DecodingKey::from_ec_pem(key.public_key_pem().as_bytes()).expect("public key"),
            log: log.clone(),
            jwts: Mutex::new(HashSet::new()),
        });
        let s = state.clone();
        let handler: Handler = Arc::new(move |req| {
            let s = s.clone();
            Box::pin(async move {
                s.log.wait_released().await;
                s.handle(req)
            })
        });
        let (addr, task) = ca.serve(handler).await;
        FakeApns {
            addr,
            url: format!("https://localhost:{}", addr.port()),
            key_file,
            ca_file: ca.ca_file.clone(),
            log,
            state,
            task,
        }
    }

    /// Environment for a Herald that sends to this fake.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("HERALD_PUSH__APNS__ENDPOINT".into(), self.url.clone()),
            (
                "HERALD_PUSH__APNS__KEY_FILE".into(),
                self.key_file.display().to_string(),
            ),
            ("HERALD_PUSH__APNS__KEY_ID".into(), KEY_ID.into()),
            ("HERALD_PUSH__APNS__TEAM_ID".into(), TEAM_ID.into()),
            ("HERALD_PUSH__APNS__TOPIC".into(), TOPIC.into()),
            (
                "HERALD_PUSH__APNS__CA_FILE".into(),
                self.ca_file.display().to_string(),
            ),
        ]
    }

    /// How many different provider tokens Herald used.
    pub fn distinct_jwts(&self) -> usize {
        self.state.jwts.lock().len()
    }
}

fn error(status: u16, reason: &str) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
    let mut body = json!({"reason": reason});
    if status == 410 {
        body["timestamp"] = json!(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0));
    }
    json_response(status, &body, &[])
}

fn canonical_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && parts
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(p, n)| p.len() == n && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

impl State {
    /// Checks the request; `Err((status, reason))` is Apple's answer to a bad one.
    fn check(&self, req: &Req) -> Result<Accepted, (u16, String)> {
        if req.method != hyper::Method::POST {
            return Err((405, "MethodNotAllowed".into()));
        }
        let Some(token) = req.path.strip_prefix("/3/device/") else {
            return Err((404, "BadPath".into()));
        };
        if req.version != hyper::Version::HTTP_2 {
            return Err((400, "BadPath".into()));
        }
        let mut headers = HashMap::new();
        for name in req.headers.keys() {
            let n = name.as_str();
            if n.starts_with("apns-") && req.headers.get_all(name).iter().count() > 1 {
                return Err((400, "DuplicateHeaders".into()));
            }
            if let Ok(v) = req.headers[name].to_str() {
                headers.insert(n.to_string(), v.to_string());
            }
        }
        // Provider token.
        let Some(auth) = headers.get("authorization") else {
            return Err((403, "MissingProviderToken".into()));
        };
        let Some(jwt) = auth.strip_prefix("bearer ") else {
            return Err((403, "InvalidProviderToken".into()));
        };
        let header = jsonwebtoken::decode_header(jwt)
            .map_err(|_| (403, "InvalidProviderToken".to_string()))?;
        if header.alg != Algorithm::ES256 || header.kid.as_deref() != Some(KEY_ID) {
            return Err((403, "InvalidProviderToken".into()));
        }
        let mut v = Validation::new(Algorithm::ES256);
        v.validate_exp = false;
        v.required_spec_claims = HashSet::new();
        // A token whose signature was verified once is not verified again (as a
        // server caching its checks would), so the fake keeps up in benchmarks.
        let claims = if self.jwts.lock().contains(jwt) {
            let mut insecure = Validation::new(Algorithm::ES256);
            insecure.insecure_disable_signature_validation();
            insecure.validate_exp = false;
            insecure.required_spec_claims = HashSet::new();
            jsonwebtoken::decode::<Value>(jwt, &DecodingKey::from_secret(b""), &insecure)
                .map_err(|_| (403, "InvalidProviderToken".to_string()))?
                .claims
        } else {
            jsonwebtoken::decode::<Value>(jwt, &self.key, &v)
                .map_err(|_| (403, "InvalidProviderToken".to_string()))?
                .claims
        };
        if claims["iss"] != TEAM_ID {
            return Err((403, "InvalidProviderToken".into()));
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let iat = claims["iat"]
            .as_i64()
            .ok_or((403, "InvalidProviderToken".to_string()))?;
        if iat > now + 60 {
            return Err((403, "InvalidProviderToken".into()));
        }
        if now - iat > 3600 {
            return Err((403, "ExpiredProviderToken".into()));
        }
        self.jwts.lock().insert(jwt.to_string());
        // Headers.
        match headers.get("apns-topic") {
            None => return Err((400, "MissingTopic".into())),
            Some(t) if t != TOPIC => return Err((400, "TopicDisallowed".into())),
            _ => {}
        }
        let push_type = headers.get("apns-push-type").cloned().unwrap_or_default();
        if !PUSH_TYPES.contains(&push_type.as_str()) {
            return Err((400, "InvalidPushType".into()));
        }
        let priority = headers
            .get("apns-priority")
            .cloned()
            .unwrap_or_else(|| "10".into());
        if !["10", "5", "1"].contains(&priority.as_str()) {
            return Err((400, "BadPriority".into()));
        }
        if push_type == "background" && priority != "5" {
            return Err((400, "BadPriority".into()));
        }
        if let Some(e) = headers.get("apns-expiration") {
            if e.parse::<u64>().is_err() {
                return Err((400, "BadExpirationDate".into()));
            }
        }
        if headers.get("apns-id").is_some_and(|id| !canonical_uuid(id)) {
            return Err((400, "BadMessageId".into()));
        }
        if headers
            .get("apns-collapse-id")
            .is_some_and(|c| c.len() > 64)
        {
            return Err((400, "BadCollapseId".into()));
        }
        if token.is_empty() {
            return Err((400, "MissingDeviceToken".into()));
        }
        if token.len() < 64 || token.len() % 2 != 0 || !token.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err((400, "BadDeviceToken".into()));
        }
        // Payload.
        if req.body.is_empty() {
            return Err((400, "PayloadEmpty".into()));
        }
        if req.body.len() > 4096 {
            return Err((413, "PayloadTooLarge".into()));
        }
        let payload: Value =
            serde_json::from_slice(&req.body).map_err(|_| (400, "PayloadEmpty".to_string()))?;
        let Some(aps) = payload.get("aps").and_then(Value::as_object) else {
            return Err((400, "PayloadEmpty".into()));
        };
        if push_type == "alert" && !aps.contains_key("alert") {
            return Err((400, "PayloadEmpty".into()));
        }
        if push_type == "background" && aps.get("content-available") != Some(&json!(1)) {
            return Err((400, "PayloadEmpty".into()));
        }
        Ok((token.to_string(), headers, payload))
    }

    fn handle(&self, req: Req) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
        let (token, headers, payload) = match self.check(&req) {
            Ok(ok) => ok,
            Err((status, reason)) => {
                self.log.violation(format!(
                    "apns {} {}: {status} {reason}",
                    req.method, req.path
                ));
                return error(status, &reason);
            }
        };
        let reply = self.log.next_reply(&token);
        let apns_id = headers
            .get("apns-id")
            .cloned()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        self.log.record(Seen {
            token,
            headers,
            payload,
            reply,
            at: Instant::now(),
            conn: req.conn,
        });
        let id = [("apns-id", apns_id)];
        match reply {
            Reply::Ok => empty_response(200, &id),
            Reply::InvalidToken => error(400, "BadDeviceToken"),
            Reply::Unregistered => error(410, "Unregistered"),
            Reply::TooMany(after) => {
                let mut h = vec![];
                if let Some(s) = after {
                    h.push(("retry-after", s.to_string()));
                }
                json_response(429, &json!({"reason": "TooManyRequests"}), &h)
            }
            Reply::Unavailable => error(503, "ServiceUnavailable"),
            Reply::Internal => error(500, "InternalServerError"),
        }
    }
}
