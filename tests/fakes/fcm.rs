//! A fake FCM: the OAuth2 token endpoint of a service account and the HTTP v1 send API.
//!
//! Checked as Google documents it ("Using OAuth 2.0 for Server to Server Applications",
//! FCM HTTP v1 `projects.messages.send`): the token request is a form with
//! `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer` and an RS256 `assertion`
//! (header `kid` = private_key_id; claims `iss` = client_email, `scope` with
//! firebase.messaging, `aud` = token_uri, `exp` at most an hour after `iat`) signed by
//! the service account's key. A send needs `Authorization: Bearer <issued token>`, the
//! project of the key, a `message` with exactly one of token/topic/condition, only
//! known fields, string data values, an Android priority and ttl of the documented
//! forms, and at most 4096 bytes of notification and data. Errors are the documented
//! bodies: `{"error": {code, message, status, details: [FcmError {errorCode}]}}`.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use parking_lot::Mutex;
use serde_json::{json, Value};

use super::tls::{json_response, Handler, Req, TestCa};
use super::{Accepted, Log, Reply, Seen};

pub const PROJECT: &str = "herald-test";
pub const CLIENT_EMAIL: &str = "pusher@herald-test.iam.gserviceaccount.com";
pub const KEY_ID: &str = "0123456789abcdef";
const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
const MESSAGE_FIELDS: &[&str] = &[
    "name",
    "data",
    "notification",
    "android",
    "webpush",
    "apns",
    "fcm_options",
    "token",
    "topic",
    "condition",
];

fn fixture(name: &str) -> String {
    let p = format!("{}/tests/fixtures/keys/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

pub struct FakeFcm {
    pub addr: SocketAddr,
    /// Base URL for `push.fcm.endpoint`.
    pub url: String,
    /// The service account key file for `push.fcm.service_account_file`.
    pub service_account_file: PathBuf,
    pub ca_file: PathBuf,
    pub log: Arc<Log>,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

struct State {
    key: DecodingKey,
    token_uri: String,
    log: Arc<Log>,
    /// Access tokens issued and not revoked.
    issued: Mutex<HashSet<String>>,
    token_requests: AtomicU64,
    next: AtomicU64,
}

impl Drop for FakeFcm {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeFcm {
    pub async fn start(dir: &std::path::Path) -> FakeFcm {
        let ca = TestCa::new(&dir.join("."));
        let log = Arc::new(Log::default());
        // The port is needed for token_uri before the state exists: bind first.
        let cell: Arc<Mutex<Option<Arc<State>>>> = Arc::new(Mutex::new(None));
        let c = cell.clone();
        let handler: Handler = Arc::new(move |req| {
            let s = c.lock().clone();
            Box::pin(async move {
                match s {
                    Some(s) => {
                        // Only sends are held: the OAuth token endpoint answers.
                        if req.path != "/token" {
                            s.log.wait_released().await;
                        }
                        s.handle(req)
                    }
                    None => json_response(503, &json!({}), &[]),
                }
            })
        });
        let (addr, task) = ca.serve(handler).await;
        let url = format!("https://localhost:{}", addr.port());
        let token_uri = format!("{url}/token");
        let state = Arc::new(State {
            key: DecodingKey::from_rsa_pem(fixture("rsa_public.pem").as_bytes())
                .expect("rsa public"),
            token_uri: token_uri.clone(),
            log: log.clone(),
            issued: Mutex::new(HashSet::new()),
            token_requests: AtomicU64::new(0),
            next: AtomicU64::new(1),
        });
        *cell.lock() = Some(state.clone());
        let service_account_file = dir.join("service-account.json");
        let sa = json!({
            "type": "service_account",
            "project_id": PROJECT,
            "private_key_id": KEY_ID,
            "private_key": fixture("rsa_private.pem"),
            "client_email": CLIENT_EMAIL,
            "client_id": "100000000000000000001",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": token_uri,
        });
        std::fs::write(&service_account_file, sa.to_string()).expect("write service account");
        FakeFcm {
            addr,
            url,
            service_account_file,
            ca_file: ca.ca_file.clone(),
            log,
            state,
            task,
        }
    }

    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("HERALD_PUSH__FCM__ENDPOINT".into(), self.url.clone()),
            (
                "HERALD_PUSH__FCM__SERVICE_ACCOUNT_FILE".into(),
                self.service_account_file.display().to_string(),
            ),
            (
                "HERALD_PUSH__FCM__CA_FILE".into(),
                self.ca_file.display().to_string(),
            ),
        ]
    }

    /// OAuth token requests answered so far.
    pub fn token_requests(&self) -> u64 {
        self.state.token_requests.load(Ordering::SeqCst)
    }

    /// Makes every issued access token invalid (as if it expired).
    pub fn revoke_tokens(&self) {
        self.state.issued.lock().clear();
    }
}

fn fcm_error(status: u16, canonical: &str, code: Option<&str>, message: &str) -> Value {
    let mut details = vec![];
    if let Some(c) = code {
        details.push(
            json!({"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": c}),
        );
    }
    json!({"error": {"code": status, "message": message, "status": canonical, "details": details}})
}

fn bad_field(field: &str, description: &str) -> Value {
    json!({"error": {"code": 400, "message": description, "status": "INVALID_ARGUMENT", "details": [
        {"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": [{"field": field, "description": description}]}
    ]}})
}

fn form(body: &[u8]) -> HashMap<String, String> {
    let decode = |s: &str| -> String {
        let s = s.replace('+', " ");
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' && i + 3 <= b.len() {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    out.push(v);
                    i += 3;
                    continue;
                }
            }
            out.push(b[i]);
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    String::from_utf8_lossy(body)
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

type Resp = hyper::Response<http_body_util::Full<bytes::Bytes>>;

impl State {
    fn handle(&self, req: Req) -> Resp {
        if req.method == hyper::Method::POST && req.path == "/token" {
            return self.token(&req);
        }
        let send_path = format!("/v1/projects/{PROJECT}/messages:send");
        if req.method == hyper::Method::POST && req.path == send_path {
            return self.send(&req);
        }
        self.log
            .violation(format!("fcm: unexpected {} {}", req.method, req.path));
        json_response(404, &fcm_error(404, "NOT_FOUND", None, "not found"), &[])
    }

    fn token(&self, req: &Req) -> Resp {
        self.token_requests.fetch_add(1, Ordering::SeqCst);
        let refuse = |why: &str| {
            self.log.violation(format!("fcm oauth: {why}"));
            json_response(
                400,
                &json!({"error": "invalid_grant", "error_description": why}),
                &[],
            )
        };
        let ct = req
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if !ct.starts_with("application/x-www-form-urlencoded") {
            return refuse("not a form");
        }
        let f = form(&req.body);
        if f.get("grant_type").map(String::as_str)
            != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
        {
            return refuse("bad grant_type");
        }
        let Some(assertion) = f.get("assertion") else {
            return refuse("no assertion");
        };
        let Ok(header) = jsonwebtoken::decode_header(assertion) else {
            return refuse("assertion is not a JWT");
        };
        if header.alg != Algorithm::RS256 || header.kid.as_deref() != Some(KEY_ID) {
            return refuse("assertion header: RS256 with the key id");
        }
        let mut v = Validation::new(Algorithm::RS256);
        v.set_audience(&[self.token_uri.as_str()]);
        v.set_issuer(&[CLIENT_EMAIL]);
        v.set_required_spec_claims(&["exp", "iat", "aud", "iss"]);
        let claims = match jsonwebtoken::decode::<Value>(assertion, &self.key, &v) {
            Ok(d) => d.claims,
            Err(e) => return refuse(&format!("assertion: {e}")),
        };
        let scopes = claims["scope"].as_str().unwrap_or_default();
        if !scopes.split(' ').any(|s| s == SCOPE) {
            return refuse("scope lacks firebase.messaging");
        }
        let (iat, exp) = (
            claims["iat"].as_i64().unwrap_or(0),
            claims["exp"].as_i64().unwrap_or(0),
        );
        if exp <= iat || exp - iat > 3600 {
            return refuse("exp must be at most an hour after iat");
        }
        let tok = format!("ya29.fake-{}", self.next.fetch_add(1, Ordering::SeqCst));
        self.issued.lock().insert(tok.clone());
        json_response(
            200,
            &json!({"access_token": tok, "expires_in": 3599, "token_type": "Bearer"}),
            &[],
        )
    }

    /// Checks a send; `Err(body)` is Google's answer to a bad one (status in the body).
    fn check(&self, req: &Req) -> Result<Accepted, Value> {
        let auth = req
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let tok = auth.strip_prefix("Bearer ").unwrap_or_default();
        if !self.issued.lock().contains(tok) {
            return Err(fcm_error(
                401,
                "UNAUTHENTICATED",
                None,
                "Request had invalid authentication credentials.",
            ));
        }
        let body: Value = serde_json::from_slice(&req.body)
            .map_err(|_| bad_field("", "Invalid JSON payload received."))?;
        let Some(m) = body.get("message").and_then(Value::as_object) else {
            return Err(bad_field("message", "message is required"));
        };
        for k in m.keys() {
            if !MESSAGE_FIELDS.contains(&k.as_str()) {
                return Err(bad_field(
                    k,
                    &format!("Invalid JSON payload received. Unknown name \"{k}\""),
                ));
            }
        }
        let targets = ["token", "topic", "condition"]
            .iter()
            .filter(|t| m.contains_key(**t))
            .count();
        if targets != 1 {
            return Err(bad_field(
                "message",
                "exactly one of token, topic, condition",
            ));
        }
        if let Some(data) = m.get("data") {
            let Some(d) = data.as_object() else {
                return Err(bad_field("message.data", "data must be a map"));
            };
            for (i, v) in d.values().enumerate() {
                if !v.is_string() {
                    return Err(bad_field(
                        &format!("message.data[{i}].value"),
                        &format!("Invalid value at 'message.data[{i}].value' (TYPE_STRING), {v}"),
                    ));
                }
            }
        }
        if let Some(n) = m.get("notification") {
            for k in ["title", "body"] {
                if n.get(k).is_some_and(|v| !v.is_string()) {
                    return Err(bad_field(
                        &format!("message.notification.{k}"),
                        "must be a string",
                    ));
                }
            }
        }
        if let Some(a) = m.get("android") {
            if let Some(p) = a.get("priority") {
                if !matches!(p.as_str(), Some("NORMAL" | "HIGH")) {
                    return Err(bad_field("message.android.priority", "NORMAL or HIGH"));
                }
            }
            if let Some(ttl) = a.get("ttl") {
                let ok = ttl
                    .as_str()
                    .and_then(|t| t.strip_suffix('s'))
                    .is_some_and(|n| n.parse::<f64>().is_ok_and(|x| x >= 0.0));
                if !ok {
                    return Err(bad_field(
                        "message.android.ttl",
                        "a duration such as \"3.5s\"",
                    ));
                }
            }
        }
        if let Some(h) = m
            .get("apns")
            .and_then(|a| a.get("headers"))
            .and_then(Value::as_object)
        {
            if h.values().any(|v| !v.is_string()) {
                return Err(bad_field(
                    "message.apns.headers",
                    "header values are strings",
                ));
            }
        }
        let counted =
            json!({"notification": m.get("notification"), "data": m.get("data")}).to_string();
        if counted.len() > 4096 {
            return Err(fcm_error(
                400,
                "INVALID_ARGUMENT",
                Some("INVALID_ARGUMENT"),
                "Message too big",
            ));
        }
        let token = m
            .get("token")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let headers = req
            .headers
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
            .collect();
        Ok((token, headers, Value::Object(m.clone())))
    }

    fn send(&self, req: &Req) -> Resp {
        let (token, headers, message) = match self.check(req) {
            Ok(ok) => ok,
            Err(body) => {
                let status = body["error"]["code"].as_u64().unwrap_or(400) as u16;
                if status != 401 {
                    self.log.violation(format!("fcm send: {body}"));
                }
                return json_response(status, &body, &[]);
            }
        };
        let reply = self.log.next_reply(&token);
        self.log.record(Seen {
            token,
            headers,
            payload: message,
            reply,
            at: Instant::now(),
            conn: req.conn,
        });
        match reply {
            Reply::Ok => {
                let n = self.next.fetch_add(1, Ordering::SeqCst);
                json_response(
                    200,
                    &json!({"name": format!("projects/{PROJECT}/messages/0:{n}")}),
                    &[],
                )
            }
            Reply::InvalidToken => json_response(
                400,
                &fcm_error(
                    400,
                    "INVALID_ARGUMENT",
                    Some("INVALID_ARGUMENT"),
                    "The registration token is not a valid FCM registration token",
                ),
                &[],
            ),
            Reply::Unregistered => json_response(
                404,
                &fcm_error(
                    404,
                    "NOT_FOUND",
                    Some("UNREGISTERED"),
                    "Requested entity was not found.",
                ),
                &[],
            ),
            Reply::TooMany(after) => {
                let mut h = vec![];
                if let Some(s) = after {
                    h.push(("retry-after", s.to_string()));
                }
                json_response(
                    429,
                    &fcm_error(
                        429,
                        "RESOURCE_EXHAUSTED",
                        Some("QUOTA_EXCEEDED"),
                        "Quota exceeded.",
                    ),
                    &h,
                )
            }
            Reply::Unavailable => json_response(
                503,
                &fcm_error(
                    503,
                    "UNAVAILABLE",
                    Some("UNAVAILABLE"),
                    "The service is currently unavailable.",
                ),
                &[],
            ),
            Reply::Internal => json_response(
                500,
                &fcm_error(
                    500,
                    "INTERNAL",
                    Some("INTERNAL"),
                    "Internal error encountered.",
                ),
                &[],
            ),
        }
    }
}
