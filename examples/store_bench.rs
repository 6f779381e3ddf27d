//! Embedded store benchmark: durable appends/s with group commit, and history page
//! latency on a large store. Results go to docs/BENCHMARKS.md by hand.
//!
//! cargo run --release --example store_bench -- [--messages N] [--channels C]
//!     [--concurrency K] [--sync full|normal] [--pages P] [--path DIR]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use herald::broker::HistoryFilter;
use herald::protocol::messages::{ClientInfo, Publication, StreamPosition};
use herald::store::sqlite::{SqliteOptions, SqliteStore, Sync};
use herald::store::{Append, MessageStore};

struct Args {
    messages: u64,
    channels: u64,
    concurrency: u64,
    sync: Sync,
    pages: u64,
    path: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        messages: 1_000_000,
        channels: 1000,
        concurrency: 512,
        sync: Sync::Full,
        pages: 10_000,
        path: None,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        let mut val = || it.next().cloned().ok_or(format!("{flag} needs a value"));
        let num = |v: String| v.parse::<u64>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--messages" => a.messages = num(val()?)?,
            "--channels" => a.channels = num(val()?)?,
            "--concurrency" => a.concurrency = num(val()?)?,
            "--pages" => a.pages = num(val()?)?,
            "--path" => a.path = Some(val()?),
            "--sync" => {
                a.sync = match val()?.as_str() {
                    "full" => Sync::Full,
                    "normal" => Sync::Normal,
                    other => return Err(format!("--sync {other}: use full or normal")),
                }
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(a)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args()?;
    let dir = match &args.path {
        Some(p) => std::path::PathBuf::from(p),
        None => std::env::temp_dir().join(format!("herald-store-bench-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir)?;
    let store = Arc::new(SqliteStore::open(SqliteOptions {
        path: dir.join("herald.db"),
        sync: args.sync,
        idempotency_window: Duration::from_secs(300),
    })?);

    // 200-byte payloads: a JSON object padded to size.
    let pad = "x".repeat(200 - r#"{"t":""}"#.len());
    let data = Bytes::from(format!(r#"{{"t":"{pad}"}}"#));
    assert_eq!(data.len(), 200);

    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let (store, next, data) = (store.clone(), next.clone(), data.clone());
        let (total, channels) = (args.messages, args.channels);
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return Ok::<(), String>(());
                }
                let append = Append {
                    channel: format!("bench:{}", i % channels),
                    publication: Publication {
                        data: data.clone(),
                        info: Some(ClientInfo {
                            user: format!("u{}", i % 10_000),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                    ..Default::default()
                };
                store.append(append).await.map_err(|e| e.to_string())?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    let elapsed = started.elapsed();
    let rate = args.messages as f64 / elapsed.as_secs_f64();
    println!(
        "appends: {} messages of 200 B over {} channels, concurrency {}, sync {:?}: {:.2} s, {:.0} msgs/s",
        args.messages,
        args.channels,
        args.concurrency,
        args.sync,
        elapsed.as_secs_f64(),
        rate
    );

    // History pages of 50 at random positions of random channels.
    let per_channel = args.messages / args.channels;
    let (_, top) = store
        .history(
            "bench:0",
            HistoryFilter {
                limit: Some(0),
                ..Default::default()
            },
        )
        .await?;
    let epoch = top.epoch;
    let mut lat = Vec::with_capacity(args.pages as usize);
    let mut rng_state = 0x9E37_79B9_7F4A_7C15u64;
    let mut rand = move || {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        rng_state
    };
    for _ in 0..args.pages {
        let ch = rand() % args.channels;
        let since = rand() % per_channel.saturating_sub(50).max(1);
        let channel = format!("bench:{ch}");
        let (_, t) = store
            .history(
                &channel,
                HistoryFilter {
                    limit: Some(0),
                    ..Default::default()
                },
            )
            .await?;
        let filter = HistoryFilter {
            since: Some(StreamPosition {
                offset: since,
                epoch: t.epoch,
            }),
            limit: Some(50),
            reverse: false,
        };
        let q = Instant::now();
        let (pubs, _) = store.history(&channel, filter).await?;
        lat.push(q.elapsed());
        if pubs.len() != 50 {
            return Err(format!(
                "page of {} instead of 50 on {channel} since {since}",
                pubs.len()
            )
            .into());
        }
    }
    let _ = epoch;
    lat.sort();
    println!(
        "history pages of 50 ({} queries, {} stored): p50 {:?}, p99 {:?}, max {:?}",
        args.pages,
        args.messages,
        percentile(&lat, 0.50),
        percentile(&lat, 0.99),
        percentile(&lat, 1.0)
    );
    if args.path.is_none() {
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}
