//! The coordinator's side of the worker processes: starts them (this same binary, run as
//! `herald-loadtest worker ...`), reads their status lines and stops them by closing
//! their stdin.

use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

use crate::hist;
use crate::peer::PeerConf;
use crate::worker::{ChannelPlan, Status, PEER_ENV};

/// Environment variable that hands the HMAC secret to workers (kept off their command
/// lines, which any local user can read).
pub const SECRET_ENV: &str = "HERALD_LOADTEST_HMAC_SECRET";

/// What every worker shares; each gets its own slice of the clients.
pub struct FleetPlan<'a> {
    pub peer: &'a PeerConf,
    pub secret: &'a str,
    pub connections: u64,
    pub workers: usize,
    pub source_addrs: u8,
    pub concurrency: usize,
    pub channels: &'a ChannelPlan,
    pub connect_timeout: Duration,
    /// Publications per second per client in the publish phase (0: none).
    pub chat_rate: f64,
}

pub struct Fleet {
    children: Vec<Child>,
    stdins: Vec<ChildStdin>,
    updates: mpsc::UnboundedReceiver<Status>,
    /// Latest status per worker.
    pub latest: Vec<Status>,
}

impl Fleet {
    pub fn spawn(plan: &FleetPlan) -> anyhow::Result<Fleet> {
        let exe = std::env::current_exe().context("locating own executable")?;
        let (tx, updates) = mpsc::unbounded_channel();
        let mut children = Vec::new();
        let mut stdins = Vec::new();
        let per_worker_concurrency = plan.concurrency.div_ceil(plan.workers).max(1);
        let peer_json = serde_json::to_string(plan.peer)?;
        for i in 0..plan.workers {
            let (start, end) = share(plan.connections, plan.workers, i);
            let mut child = Command::new(&exe)
                .arg("worker")
                .args(["--worker-index", &i.to_string()])
                .args(["--start", &start.to_string(), "--end", &end.to_string()])
                .args(["--source-addrs", &plan.source_addrs.to_string()])
                .args(["--concurrency", &per_worker_concurrency.to_string()])
                .args(["--channel-prefix", &plan.channels.prefix])
                .args(["--channels", &plan.channels.count.to_string()])
                .args(["--room-size", &plan.channels.room_size.to_string()])
                .args(["--chat-rate", &plan.chat_rate.to_string()])
                .args([
                    "--connect-timeout-secs",
                    &plan.connect_timeout.as_secs_f64().to_string(),
                ])
                .env(SECRET_ENV, plan.secret)
                .env(PEER_ENV, &peer_json)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("starting worker {i}"))?;
            let stdout = child.stdout.take().context("worker stdout")?;
            stdins.push(child.stdin.take().context("worker stdin")?);
            tokio::spawn(forward_status(stdout, tx.clone()));
            children.push(child);
        }
        let latest = (0..plan.workers)
            .map(|i| Status {
                worker: i,
                ..Status::default()
            })
            .collect();
        Ok(Fleet {
            children,
            stdins,
            updates,
            latest,
        })
    }

    /// Waits up to `wait` for the next status line. `false` once every worker's output
    /// has ended.
    pub async fn poll(&mut self, wait: Duration) -> bool {
        match tokio::time::timeout(wait, self.updates.recv()).await {
            Ok(Some(s)) => {
                if let Some(slot) = self.latest.get_mut(s.worker) {
                    *slot = s;
                }
                true
            }
            Ok(None) => false,
            Err(_) => true,
        }
    }

    /// Reads statuses for `period`.
    pub async fn watch_for(&mut self, period: Duration) {
        let until = tokio::time::Instant::now() + period;
        while tokio::time::Instant::now() < until {
            let left = until - tokio::time::Instant::now();
            if !self.poll(left).await {
                tokio::time::sleep_until(until).await;
            }
        }
    }

    /// The workers' counters added up.
    pub fn total(&self) -> Status {
        let mut t = Status {
            connecting_done: true,
            stopped: true,
            ..Status::default()
        };
        for s in &self.latest {
            t.target += s.target;
            t.connected += s.connected;
            t.failed += s.failed;
            t.dropped += s.dropped;
            t.pings += s.pings;
            t.deliveries += s.deliveries;
            t.published += s.published;
            t.publish_errors += s.publish_errors;
            t.connecting_done &= s.connecting_done;
            t.stopped &= s.stopped;
            for (k, n) in &s.errors {
                *t.errors.entry(k.clone()).or_default() += n;
            }
            t.first_error = t.first_error.or_else(|| s.first_error.clone());
            t.first_drop = t.first_drop.or_else(|| s.first_drop.clone());
        }
        t
    }

    /// Sends a command line (`publish`, `quiet`) to every worker.
    pub async fn command(&mut self, line: &str) {
        for (i, stdin) in self.stdins.iter_mut().enumerate() {
            let text = format!("{line}\n");
            if let Err(e) = stdin.write_all(text.as_bytes()).await {
                eprintln!("worker {i}: cannot send {line:?}: {e}");
            }
            let _ = stdin.flush().await;
        }
    }

    /// The workers' last-reported histograms of one kind, merged.
    pub fn merged(
        &self,
        pick: impl Fn(&Status) -> Option<&String>,
    ) -> hdrhistogram::Histogram<u64> {
        let parts: Vec<&str> = self
            .latest
            .iter()
            .filter_map(|s| pick(s).map(String::as_str))
            .collect();
        match hist::merge(parts) {
            Ok(h) => h,
            Err(e) => {
                eprintln!("histograms: {e:#}");
                hist::new()
            }
        }
    }

    /// Closes every worker's stdin, collects their last reports, and reaps them
    /// (killing any that take longer than `grace`).
    pub async fn stop(&mut self, grace: Duration) -> Status {
        self.stdins.clear();
        let until = tokio::time::Instant::now() + grace;
        while !self.total().stopped && tokio::time::Instant::now() < until {
            if !self.poll(until - tokio::time::Instant::now()).await {
                break;
            }
        }
        for child in &mut self.children {
            if tokio::time::timeout(Duration::from_secs(2), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
        self.total()
    }
}

/// Clients `start..end` of worker `i` out of `workers`.
fn share(connections: u64, workers: usize, i: usize) -> (u64, u64) {
    let w = workers as u64;
    let i = i as u64;
    (connections * i / w, connections * (i + 1) / w)
}

async fn forward_status(stdout: tokio::process::ChildStdout, tx: mpsc::UnboundedSender<Status>) {
    let mut lines = BufReader::new(stdout).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        match serde_json::from_str::<Status>(&line) {
            Ok(s) => {
                if tx.send(s).is_err() {
                    return;
                }
            }
            Err(e) => eprintln!("unreadable worker status {line:?}: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::share;

    #[test]
    fn shares_cover_every_client_once() {
        let parts: Vec<_> = (0..3).map(|i| share(10, 3, i)).collect();
        assert_eq!(parts, vec![(0, 3), (3, 6), (6, 10)]);
    }
}
