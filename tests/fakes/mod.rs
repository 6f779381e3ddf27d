//! Fake APNs and FCM servers: real HTTP/2 over TLS (a CA made per test), checking each
//! request the way Apple's and Google's documentation describes it, and answering with
//! the documented success and error responses, scripted per device token.
//!
//! Requests that break a documented rule are answered with the provider's error and
//! also recorded in `violations()`, which every test expects to be empty.
#![allow(dead_code)]

pub mod apns;
pub mod fcm;
pub mod tls;

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// How a fake answers one request for a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// 200.
    Ok,
    /// APNs 400 BadDeviceToken; FCM 400 INVALID_ARGUMENT about the token.
    InvalidToken,
    /// APNs 410 Unregistered; FCM 404 UNREGISTERED.
    Unregistered,
    /// APNs 429 TooManyRequests; FCM 429 QUOTA_EXCEEDED; with Retry-After seconds.
    TooMany(Option<u64>),
    /// APNs 503 ServiceUnavailable; FCM 503 UNAVAILABLE.
    Unavailable,
    /// APNs 500 InternalServerError; FCM 500 INTERNAL.
    Internal,
}

/// A well-formed request's device token, headers and JSON payload.
pub type Accepted = (String, HashMap<String, String>, serde_json::Value);

/// A request the fake accepted as well-formed, and how it answered.
#[derive(Debug, Clone)]
pub struct Seen {
    pub token: String,
    pub headers: HashMap<String, String>,
    pub payload: serde_json::Value,
    pub reply: Reply,
    pub at: Instant,
    /// The connection it came on (`tls::Req::conn`).
    pub conn: u64,
}

/// What both fakes keep: scripts, the default answer, the log.
#[derive(Default)]
pub struct Log {
    /// Answers per token, used in order; the default after they run out.
    scripts: Mutex<HashMap<String, VecDeque<Reply>>>,
    default: Mutex<Option<Reply>>,
    seen: Mutex<Vec<Seen>>,
    violations: Mutex<Vec<String>>,
    changed: tokio::sync::Notify,
    /// While set, sends wait before they are answered (a provider that hangs).
    held: std::sync::atomic::AtomicBool,
    waiting: std::sync::atomic::AtomicUsize,
}

impl Log {
    pub fn script(&self, token: &str, replies: &[Reply]) {
        self.scripts
            .lock()
            .insert(token.to_string(), replies.iter().copied().collect());
    }

    pub fn set_default(&self, r: Reply) {
        *self.default.lock() = Some(r);
    }

    pub fn next_reply(&self, token: &str) -> Reply {
        if let Some(r) = self
            .scripts
            .lock()
            .get_mut(token)
            .and_then(VecDeque::pop_front)
        {
            return r;
        }
        self.default.lock().unwrap_or(Reply::Ok)
    }

    /// Holds (or releases) every send: a held one is answered after the release, so
    /// the sender keeps it in flight meanwhile.
    pub fn hold(&self, on: bool) {
        self.held.store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// Sends waiting for a release.
    pub fn waiting(&self) -> usize {
        self.waiting.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub async fn wait_released(&self) {
        use std::sync::atomic::Ordering::SeqCst;
        if !self.held.load(SeqCst) {
            return;
        }
        self.waiting.fetch_add(1, SeqCst);
        while self.held.load(SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.waiting.fetch_sub(1, SeqCst);
    }

    pub fn record(&self, s: Seen) {
        self.seen.lock().push(s);
        self.changed.notify_waiters();
    }

    pub fn violation(&self, v: String) {
        eprintln!("fake provider: violation: {v}");
        self.violations.lock().push(v);
        self.changed.notify_waiters();
    }

    /// Requests accepted so far.
    pub fn count(&self) -> usize {
        self.seen.lock().len()
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().clone()
    }

    pub fn for_token(&self, token: &str) -> Vec<Seen> {
        self.seen
            .lock()
            .iter()
            .filter(|s| s.token == token)
            .cloned()
            .collect()
    }

    pub fn violations(&self) -> Vec<String> {
        self.violations.lock().clone()
    }

    /// Waits until `pred` holds on the log (bounded by `limit`; panics after it).
    pub async fn wait_until(&self, what: &str, limit: Duration, pred: impl Fn(&[Seen]) -> bool) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.changed.notified();
            if pred(&self.seen.lock()) {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                if pred(&self.seen.lock()) {
                    return;
                }
                panic!(
                    "timed out after {limit:?} waiting for {what}; seen: {:?}; violations: {:?}",
                    self.seen
                        .lock()
                        .iter()
                        .map(|s| (s.token.clone(), s.reply))
                        .collect::<Vec<_>>(),
                    self.violations()
                );
            }
        }
    }

    /// Waits for `n` requests for `token`.
    pub async fn wait_for(&self, token: &str, n: usize) -> Vec<Seen> {
        self.wait_until(
            &format!("{n} request(s) for {token}"),
            Duration::from_secs(20),
            |s| s.iter().filter(|x| x.token == token).count() >= n,
        )
        .await;
        self.for_token(token)
    }
}

/// A per-test temporary directory, removed on drop.
pub struct Dir(pub std::path::PathBuf);

impl Dir {
    pub fn new() -> Dir {
        let p = std::env::temp_dir().join(format!("herald-push-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&p).expect("temp dir");
        Dir(p)
    }
    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
    pub fn str(&self) -> &str {
        self.0.to_str().expect("utf-8 temp path")
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
