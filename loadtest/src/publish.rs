//! Publishing through a server's HTTP API at a target rate (open loop, see `pace.rs`),
//! with at most `max_inflight` requests outstanding on a keep-alive connection pool.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::sync::Semaphore;

use crate::hist;
use crate::pace::Pacer;
use crate::peer::{HttpRequest, Peer, PeerConf};
use crate::stamp;

/// Live publisher counters, read by the progress line.
#[derive(Default)]
pub struct PubCounters {
    pub sent: AtomicU64,
    pub ok: AtomicU64,
    pub errors: AtomicU64,
    pub first_error: Mutex<Option<String>>,
}

impl PubCounters {
    fn error(&self, text: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut g) = self.first_error.lock() {
            g.get_or_insert(text);
        }
    }
}

/// What a publishing phase did.
pub struct PubOutcome {
    pub ok: u64,
    pub errors: u64,
    pub skipped: u64,
    pub first_error: Option<String>,
    /// Request-to-response time of the publish calls (µs).
    pub call_latency: Histogram<u64>,
    pub elapsed: Duration,
}

/// A keep-alive HTTP client for loopback servers. Idle pooled connections are dropped
/// after 2 s, before any server's keep-alive timeout (actix-web and Node.js: 5 s)
/// closes them: reusing a connection the server is closing fails the request with
/// "error sending request", an error of the client, not of the server.
pub fn http_client(max_idle: usize) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(max_idle)
        .pool_idle_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(30))
        .tcp_nodelay(true)
        .build()?)
}

/// POSTs `req`; `Ok(body)` for a 2xx answer, else an error text.
pub async fn post(client: &reqwest::Client, req: &HttpRequest) -> Result<String, String> {
    let mut rb = client
        .post(&req.url)
        .header("Content-Type", "application/json")
        .body(req.body.clone());
    for (k, v) in &req.headers {
        rb = rb.header(*k, v);
    }
    let resp = rb
        .send()
        .await
        .map_err(|e| format!("request: {}", chain(&e)))?;
    let status = resp.status();
    let body = resp
        .text()
        .await
        .map_err(|e| format!("reading body: {}", chain(&e)))?;
    if !status.is_success() {
        return Err(format!("HTTP {status}: {}", truncate(&body, 200)));
    }
    Ok(body)
}

/// An error with its causes: reqwest's own message hides whether it was a timeout or a
/// closed connection.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Whether a 2xx publish answer still reports an error (Herald answers method errors
/// with 200 and `{"error":...}`).
fn reply_error(peer: Peer, body: &str) -> Option<String> {
    match peer {
        Peer::Herald if body.contains("\"error\"") => Some(truncate(body, 200).to_owned()),
        _ => None,
    }
}

/// How much to publish.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Publications per second.
    pub rate: f64,
    pub duration: Duration,
    /// Stop after this many publications.
    pub count: Option<u64>,
    /// Requests outstanding at most.
    pub max_inflight: usize,
}

/// Publishes stamped payloads to `channels` (round robin) at `plan.rate` per second for
/// `plan.duration` (or until `plan.count` publications), then waits for the
/// outstanding requests.
pub async fn run(
    client: &reqwest::Client,
    peer: &PeerConf,
    channels: &[String],
    plan: &Plan,
    live: Arc<PubCounters>,
) -> PubOutcome {
    let (rate, duration, count, max_inflight) =
        (plan.rate, plan.duration, plan.count, plan.max_inflight);
    let started = Instant::now();
    let until = started + duration;
    let mut pacer = Pacer::new(started, rate, (rate / 10.0).max(10.0) as u64);
    let limit = Arc::new(Semaphore::new(max_inflight.max(1)));
    let latency = Arc::new(Mutex::new(hist::new()));
    let mut seq: u64 = 0;
    let mut handles = Vec::new();
    'outer: loop {
        let due = pacer.next_due();
        if due >= until || channels.is_empty() {
            break;
        }
        tokio::time::sleep_until(due.into()).await;
        let n = pacer.take_due(Instant::now());
        for _ in 0..n {
            if count.is_some_and(|c| seq >= c) {
                break 'outer;
            }
            let Ok(permit) = limit.clone().acquire_owned().await else {
                break 'outer;
            };
            let channel = &channels[(seq % channels.len() as u64) as usize];
            let req = peer.publish_request(channel, &stamp::payload(seq));
            seq += 1;
            live.sent.fetch_add(1, Ordering::Relaxed);
            let client = client.clone();
            let live = live.clone();
            let latency = latency.clone();
            let peer_kind = peer.peer;
            handles.push(tokio::spawn(async move {
                let t0 = Instant::now();
                let r = post(&client, &req).await;
                let us = u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX);
                if let Ok(mut h) = latency.lock() {
                    hist::record(&mut h, us);
                }
                match r.map(|body| reply_error(peer_kind, &body)) {
                    Ok(None) => {
                        live.ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Some(e)) | Err(e) => live.error(e),
                }
                drop(permit);
            }));
        }
        // Keep the handle list short.
        if handles.len() > 4096 {
            handles.retain(|h| !h.is_finished());
        }
    }
    let _ = tokio::time::timeout(
        Duration::from_secs(30),
        futures_util::future::join_all(handles),
    )
    .await;
    let call_latency = latency
        .lock()
        .map(|h| h.clone())
        .unwrap_or_else(|_| hist::new());
    PubOutcome {
        ok: live.ok.load(Ordering::Relaxed),
        errors: live.errors.load(Ordering::Relaxed),
        skipped: pacer.skipped,
        first_error: live.first_error.lock().ok().and_then(|g| g.clone()),
        call_latency,
        elapsed: started.elapsed(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn herald_method_errors_count() {
        assert!(reply_error(Peer::Herald, r#"{"error":{"code":102}}"#).is_some());
        assert!(reply_error(Peer::Herald, r#"{"result":{"offset":1}}"#).is_none());
        assert!(reply_error(Peer::Nchan, "queued messages: 1").is_none());
        assert_eq!(truncate("héllo", 2), "hé");
        let io = std::io::Error::new(std::io::ErrorKind::TimedOut, "operation timed out");
        let outer = anyhow::Error::new(io).context("error sending request");
        let as_std: &(dyn std::error::Error + 'static) = outer.as_ref();
        assert_eq!(chain(as_std), "error sending request: operation timed out");
    }
}
