//! The `history` scenario: fill `channels` channels with `history_len` publications each
//! through the server API, then let `readers` concurrent readers page through them,
//! newest first, 50 at a time, the way a chat app loads older messages:
//! `history {channel, limit: 50, reverse: true}`, then
//! `history {channel, limit: 50, reverse: true, since: {offset: <oldest seen>, epoch}}`
//! until a page comes back short. Measured: pages/s, publications/s read and the
//! latency of each page request. Herald only; the channels' namespace must keep at
//! least `history_len` publications (`history_size`), e.g. the `hist` namespace of
//! loadtest/peers/herald/bench.toml.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;
use serde::Serialize;
use serde_json::Value;

use crate::hist;
use crate::peer::{json_str, HttpRequest, Peer, PeerConf};
use crate::publish::{self, PubCounters};
use crate::report::{self, thousands, RunResult};
use crate::run::{self, Common, Progress, Sampler};

#[derive(Args, Debug, Clone, Serialize)]
pub struct HistoryArgs {
    #[command(flatten)]
    pub common: Common,
    /// Channels to fill and read.
    #[arg(long, default_value_t = 10)]
    pub channels: u64,
    /// Publications per channel (the namespace's history_size must hold them).
    #[arg(long, default_value_t = 1000)]
    pub history_len: u64,
    /// Channel names: PREFIX0, PREFIX1, ...
    #[arg(long, default_value = "hist:h")]
    pub prefix: String,
    /// Concurrent readers.
    #[arg(long, default_value_t = 16)]
    pub readers: usize,
    /// Publications per page.
    #[arg(long, default_value_t = 50)]
    pub page: u64,
    /// Seconds of reading.
    #[arg(long, default_value_t = 30.0)]
    pub duration_secs: f64,
    /// Publications per second while filling.
    #[arg(long, default_value_t = 20_000.0)]
    pub fill_rate: f64,
}

#[derive(Default)]
struct ReadCounters {
    pages: AtomicU64,
    publications: AtomicU64,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl ReadCounters {
    fn error(&self, e: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut g) = self.first_error.lock() {
            g.get_or_insert(e);
        }
    }
}

/// One page: the publications' offsets and the stream's epoch.
#[derive(Debug, PartialEq)]
pub struct Page {
    pub offsets: Vec<u64>,
    pub epoch: String,
}

/// Reads a `history` API answer.
pub fn parse_page(body: &str) -> Result<Page, String> {
    let v: Value = serde_json::from_str(body).map_err(|e| format!("not JSON: {e}"))?;
    if let Some(err) = v.get("error") {
        return Err(format!("error reply: {err}"));
    }
    let result = v.get("result").ok_or("no result")?;
    let epoch = result
        .get("epoch")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let offsets = match result.get("publications") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(pubs)) => pubs
            .iter()
            .map(|p| p.get("offset").and_then(Value::as_u64).unwrap_or(0))
            .collect(),
        Some(_) => return Err("publications is not a list".into()),
    };
    Ok(Page { offsets, epoch })
}

fn history_request(
    peer: &PeerConf,
    channel: &str,
    limit: u64,
    since: Option<(u64, &str)>,
) -> HttpRequest {
    let since = since.map_or(String::new(), |(offset, epoch)| {
        format!(
            ",\"since\":{{\"offset\":{offset},\"epoch\":{}}}",
            json_str(epoch)
        )
    });
    HttpRequest {
        url: format!("{}/api/history", crate::peer::origin_of(&peer.publish_base)),
        headers: vec![("X-API-Key", peer.api_key.clone())],
        body: format!(
            "{{\"channel\":{},\"limit\":{limit},\"reverse\":true{since}}}",
            json_str(channel)
        ),
    }
}

pub async fn run(args: HistoryArgs) -> anyhow::Result<()> {
    let c = &args.common;
    if c.server != Peer::Herald {
        bail!("the history scenario uses Herald's server API: --server herald only");
    }
    if args.channels == 0 || args.page == 0 || args.readers == 0 {
        bail!("--channels, --page and --readers must be at least 1");
    }
    let peer = c.peer_conf();
    let t0 = Instant::now();
    let sampler = c.server_pid.map(|pid| Sampler::start(pid, t0));
    let channels: Vec<String> = (0..args.channels)
        .map(|i| format!("{}{i}", args.prefix))
        .collect();
    let client = publish::http_client(args.readers.max(64))?;

    // Fill.
    let total = args.channels * args.history_len;
    eprintln!(
        "history against {}: filling {} channels with {} publications each",
        c.server, args.channels, args.history_len
    );
    let fill = publish::run(
        &client,
        &peer,
        &channels,
        &publish::Plan {
            rate: args.fill_rate,
            duration: Duration::from_secs(3600),
            count: Some(total),
            max_inflight: 64,
        },
        Arc::new(PubCounters::default()),
    )
    .await;
    eprintln!(
        "filled: {} ok, {} errors in {:.1} s{}",
        fill.ok,
        fill.errors,
        fill.elapsed.as_secs_f64(),
        fill.first_error
            .as_deref()
            .map_or(String::new(), |e| format!(" (first: {e})"))
    );
    // Check that the namespace kept everything.
    let probe = publish::post(&client, &history_request(&peer, &channels[0], 0, None))
        .await
        .map_err(|e| anyhow::anyhow!("history probe: {e}"))?;
    let kept = publish::post(
        &client,
        &history_request(&peer, &channels[0], args.history_len + 1, None),
    )
    .await
    .ok()
    .and_then(|b| parse_page(&b).ok())
    .map_or(0, |p| p.offsets.len() as u64);
    if kept < args.history_len {
        eprintln!(
            "warning: {} keeps {kept} of {} publications (history_size of its namespace?); probe: {probe}",
            channels[0], args.history_len
        );
    }

    // Read.
    let counters = Arc::new(ReadCounters::default());
    let latency = Arc::new(Mutex::new(hist::new()));
    if let Some(s) = &sampler {
        s.mark_start();
    }
    let start = Instant::now();
    let until = start + Duration::from_secs_f64(args.duration_secs);
    let mut readers = Vec::new();
    for r in 0..args.readers {
        let client = client.clone();
        let peer = peer.clone();
        let channels = channels.clone();
        let counters = counters.clone();
        let latency = latency.clone();
        let page = args.page;
        readers.push(tokio::spawn(async move {
            let mut i = r;
            while Instant::now() < until {
                let channel = &channels[i % channels.len()];
                i += 1;
                let mut since: Option<(u64, String)> = None;
                loop {
                    let req = history_request(
                        &peer,
                        channel,
                        page,
                        since.as_ref().map(|(o, e)| (*o, e.as_str())),
                    );
                    let t = Instant::now();
                    let reply = publish::post(&client, &req).await;
                    let us = u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX);
                    if let Ok(mut h) = latency.lock() {
                        hist::record(&mut h, us);
                    }
                    let p = match reply.and_then(|b| parse_page(&b)) {
                        Ok(p) => p,
                        Err(e) => {
                            counters.error(e);
                            break;
                        }
                    };
                    counters.pages.fetch_add(1, Ordering::Relaxed);
                    counters
                        .publications
                        .fetch_add(p.offsets.len() as u64, Ordering::Relaxed);
                    let oldest = p.offsets.iter().copied().min();
                    match oldest {
                        Some(o) if (p.offsets.len() as u64) == page && o > 1 => {
                            since = Some((o, p.epoch))
                        }
                        _ => break,
                    }
                    if Instant::now() >= until {
                        break;
                    }
                }
            }
        }));
    }
    let mut progress = Progress::new();
    while readers.iter().any(|h| !h.is_finished()) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let secs = start.elapsed().as_secs_f64().max(1e-3);
        let pages = counters.pages.load(Ordering::Relaxed);
        progress.show(
            &format!(
                "history {secs:.0}/{:.0} s | pages {} ({}/s) | errors {}{}",
                args.duration_secs,
                thousands(pages as f64),
                thousands(pages as f64 / secs),
                counters.errors.load(Ordering::Relaxed),
                run::server_brief(sampler.as_ref())
            ),
            false,
        );
    }
    let secs = start.elapsed().as_secs_f64().max(1e-9);
    if let Some(s) = &sampler {
        s.mark_end();
    }
    let pages = counters.pages.load(Ordering::Relaxed);
    let pubs = counters.publications.load(Ordering::Relaxed);
    progress.show(&format!("history done: {pages} pages in {secs:.1} s"), true);
    let latency = latency
        .lock()
        .map(|h| h.clone())
        .unwrap_or_else(|_| hist::new());
    let result = RunResult {
        scenario: "history".into(),
        server: c.server.to_string(),
        unix_time: run::unix_now(),
        params: serde_json::to_value(&args)?,
        clients: args.readers as u64,
        duration_secs: secs,
        published: pages,
        publish_errors: counters.errors.load(Ordering::Relaxed) + fill.errors,
        publish_first_error: counters
            .first_error
            .lock()
            .ok()
            .and_then(|g| g.clone())
            .or(fill.first_error),
        publishes_per_sec: pages as f64 / secs,
        latency: hist::summary(&latency),
        publish_call_latency: hist::summary(&fill.call_latency),
        server_stats: sampler.map(Sampler::finish),
        extra: [
            ("channels".to_owned(), args.channels as f64),
            ("history_len".to_owned(), args.history_len as f64),
            ("kept".to_owned(), kept as f64),
            ("pages_per_sec".to_owned(), pages as f64 / secs),
            ("publications_per_sec".to_owned(), pubs as f64 / secs),
            (
                "fill_per_sec".to_owned(),
                fill.ok as f64 / fill.elapsed.as_secs_f64().max(1e-9),
            ),
        ]
        .into(),
        ..RunResult::default()
    };
    let base = c.output_base("history");
    let title = format!(
        "history: {} channels × {}, pages of {}, {} readers",
        args.channels,
        thousands(args.history_len as f64),
        args.page,
        args.readers
    );
    report::write_all(&[result], &base, &title)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_history_pages() {
        let body = r#"{"result":{"publications":[{"data":{"t":1},"offset":7},{"data":{},"offset":6}],"offset":7,"epoch":"ab"}}"#;
        assert_eq!(
            parse_page(body),
            Ok(Page {
                offsets: vec![7, 6],
                epoch: "ab".into()
            })
        );
        assert_eq!(
            parse_page(r#"{"result":{"offset":0,"epoch":"x"}}"#).map(|p| p.offsets.len()),
            Ok(0)
        );
        assert!(parse_page(r#"{"error":{"code":102,"message":"unknown channel"}}"#).is_err());
        assert!(parse_page("<html>").is_err());
        assert!(parse_page(r#"{"result":{"publications":5}}"#).is_err());
    }

    #[test]
    fn page_requests_walk_backwards() {
        let peer = PeerConf {
            peer: Peer::Herald,
            ws_base: "ws://127.0.0.1:1".into(),
            publish_base: "http://127.0.0.1:1".into(),
            api_key: "k".into(),
            pusher_app_id: String::new(),
            pusher_key: String::new(),
            pusher_secret: String::new(),
        };
        let r = history_request(&peer, "h0", 50, Some((951, "ep")));
        assert_eq!(r.url, "http://127.0.0.1:1/api/history");
        assert_eq!(
            r.body,
            r#"{"channel":"h0","limit":50,"reverse":true,"since":{"offset":951,"epoch":"ep"}}"#
        );
    }
}
