//! What the load scenarios share: the server options, the server sampler (RSS and CPU
//! from /proc), the connect phase with its progress line, and output paths.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::bail;
use clap::Args;
use serde::Serialize;

use crate::fleet::{Fleet, SECRET_ENV};
use crate::peer::{Peer, PeerConf};
use crate::proc::{self, TreeSample};
use crate::report::{self, ServerStats};

/// Most clients one worker may hold: its file descriptor limit less some headroom.
pub const FD_HEADROOM: u64 = 100;

/// Which server to load, how to reach it and how to spread the clients.
#[derive(Args, Debug, Clone, Serialize)]
pub struct Common {
    /// Server kind: its protocol for subscribing and publishing.
    #[arg(long, value_enum, default_value_t = Peer::Herald)]
    pub server: Peer,
    /// WebSocket base URL of the server (`ws://host:port`; any path is ignored).
    #[arg(long, default_value = "ws://127.0.0.1:8000")]
    pub url: String,
    /// HTTP base URL of its publish endpoint (default: the WebSocket host and port;
    /// pushpin publishes on its own port).
    #[arg(long)]
    pub publish_url: Option<String>,
    /// Herald's server API key.
    #[serde(skip)]
    #[arg(
        long,
        env = "HERALD_LOADTEST_API_KEY",
        hide_env_values = true,
        default_value = ""
    )]
    pub api_key: String,
    /// HMAC secret Herald verifies connection tokens with (HS256).
    #[serde(skip)]
    #[arg(long, env = SECRET_ENV, hide_env_values = true, default_value = "")]
    pub hmac_secret: String,
    /// Pusher application of soketi.
    #[arg(long, default_value = "herald-bench")]
    pub pusher_app_id: String,
    #[arg(long, default_value = "herald-bench-key")]
    pub pusher_key: String,
    #[serde(skip)]
    #[arg(
        long,
        env = "HERALD_LOADTEST_PUSHER_SECRET",
        hide_env_values = true,
        default_value = "herald-bench-secret"
    )]
    pub pusher_secret: String,
    /// Worker processes to spread the clients over.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Source addresses 127.0.0.2, 127.0.0.3, ... to spread clients over (0: default).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(0..=250))]
    pub source_addrs: u8,
    /// Clients connecting at the same time, over all workers.
    #[arg(long, default_value_t = 200)]
    pub concurrency: usize,
    /// Seconds one client may take to connect and subscribe.
    #[arg(long, default_value_t = 15.0)]
    pub connect_timeout_secs: f64,
    /// Give up waiting for the connecting phase after this many seconds.
    #[arg(long, default_value_t = 300.0)]
    pub connect_deadline_secs: f64,
    /// Server process to sample (with its child processes) for RSS and CPU.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Output base path: writes BASE.json, BASE.md and BASE.png
    /// (default target/bench/<scenario>-<server>-<UTC time>).
    #[arg(long)]
    pub output: Option<PathBuf>,
}

impl Common {
    pub fn peer_conf(&self) -> PeerConf {
        let publish_base = self
            .publish_url
            .clone()
            .unwrap_or_else(|| self.url.replacen("ws://", "http://", 1));
        PeerConf {
            peer: self.server,
            ws_base: self.url.clone(),
            publish_base,
            api_key: self.api_key.clone(),
            pusher_app_id: self.pusher_app_id.clone(),
            pusher_key: self.pusher_key.clone(),
            pusher_secret: self.pusher_secret.clone(),
        }
    }

    /// Checks client counts against the workers' file descriptor limit.
    pub fn check_clients(&self, clients: u64) -> anyhow::Result<()> {
        if self.workers == 0 || clients == 0 {
            bail!("--workers and the number of clients must be at least 1");
        }
        if clients < self.workers as u64 {
            bail!("fewer clients than workers");
        }
        if self.server == Peer::Herald && self.hmac_secret.is_empty() {
            bail!("Herald needs the token secret: --hmac-secret or {SECRET_ENV}");
        }
        let per_worker = clients.div_ceil(self.workers as u64);
        if let Some(limit) = proc::own_fd_limit() {
            if per_worker + FD_HEADROOM > limit {
                bail!(
                    "{per_worker} clients per worker exceed the open-file limit {limit}: \
                     use --workers {} or more",
                    clients.div_ceil(limit.saturating_sub(FD_HEADROOM).max(1))
                );
            }
        }
        // About 28,000 ephemeral ports per source address.
        let addrs = u64::from(self.source_addrs.max(1));
        if clients.div_ceil(addrs) > 28_000 {
            bail!(
                "{clients} clients over {addrs} source address(es) exceed ~28,000 ports \
                 each: raise --source-addrs"
            );
        }
        Ok(())
    }

    pub fn output_base(&self, scenario: &str) -> PathBuf {
        self.output.clone().unwrap_or_else(|| {
            PathBuf::from(format!(
                "target/bench/{scenario}-{}-{}",
                self.server,
                utc_stamp(unix_now())
            ))
        })
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `20261121T055620Z` for a Unix time.
pub fn utc_stamp(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// A progress line on stderr: rewritten in place on a terminal, every 5 s otherwise.
pub struct Progress {
    tty: bool,
    last: Option<Instant>,
}

impl Progress {
    pub fn new() -> Progress {
        Progress {
            tty: std::io::stderr().is_terminal(),
            last: None,
        }
    }

    pub fn show(&mut self, line: &str, last: bool) {
        if self.tty {
            eprint!("\r{line}\x1b[K");
            if last {
                eprintln!();
            }
            return;
        }
        let every = Duration::from_secs(5);
        if last || self.last.is_none_or(|t| t.elapsed() >= every) {
            self.last = Some(Instant::now());
            eprintln!("{line}");
        }
    }
}

#[derive(Default)]
struct SamplerState {
    machine_start: Option<(u64, u64)>,
    machine_end: Option<(u64, u64)>,
    /// This process and its workers.
    tool_start: Option<(Instant, TreeSample)>,
    tool_end: Option<(Instant, TreeSample)>,
    first: Option<(Instant, TreeSample)>,
    prev: Option<(Instant, TreeSample)>,
    mark_start: Option<(Instant, TreeSample)>,
    mark_end: Option<(Instant, TreeSample)>,
    samples: Vec<(f64, u64, f64)>,
    latest: Option<(TreeSample, f64)>,
}

/// Samples the server process tree once a second in the background.
pub struct Sampler {
    pid: u32,
    t0: Instant,
    state: Arc<Mutex<SamplerState>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    pub fn start(pid: u32, t0: Instant) -> Sampler {
        let state = Arc::new(Mutex::new(SamplerState::default()));
        let st = state.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let Some(s) = proc::sample_tree(pid) else {
                    continue;
                };
                let now = Instant::now();
                let Ok(mut g) = st.lock() else { return };
                let cpu = g.prev.map_or(0.0, |(t, p)| cpu_pct(&p, &s, now - t));
                g.first.get_or_insert((now, s));
                g.prev = Some((now, s));
                g.latest = Some((s, cpu));
                let at = (now - t0).as_secs_f64();
                g.samples.push((at, s.rss_bytes, cpu));
            }
        });
        Sampler {
            pid,
            t0,
            state,
            task,
        }
    }

    fn now_sample(&self) -> Option<(Instant, TreeSample)> {
        proc::sample_tree(self.pid).map(|s| (Instant::now(), s))
    }

    /// Starts the measured window.
    pub fn mark_start(&self) {
        let s = self.now_sample();
        if let Ok(mut g) = self.state.lock() {
            g.mark_start = s;
            g.machine_start = proc::machine_ticks();
            g.tool_start = own_tree();
        }
    }

    /// Ends the measured window.
    pub fn mark_end(&self) {
        let s = self.now_sample();
        if let Ok(mut g) = self.state.lock() {
            g.mark_end = s;
            g.machine_end = proc::machine_ticks();
            g.tool_end = own_tree();
        }
    }

    /// Latest `(sample, CPU %)` for the progress line.
    pub fn latest(&self) -> Option<(TreeSample, f64)> {
        self.state.lock().ok().and_then(|g| g.latest)
    }

    pub fn finish(self) -> ServerStats {
        self.task.abort();
        let last = self.now_sample();
        let Ok(g) = self.state.lock() else {
            return ServerStats::default();
        };
        let start = g.mark_start.or(g.first);
        let end = g.mark_end.or(last).or(g.prev);
        let cpu_avg = match (start, end) {
            (Some((ta, a)), Some((tb, b))) if tb > ta => cpu_pct(&a, &b, tb - ta),
            _ => 0.0,
        };
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let machine = match (g.machine_start, g.machine_end.or_else(proc::machine_ticks)) {
            (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => {
                Some(100.0 * cores * b1.saturating_sub(b0) as f64 / (t1 - t0) as f64)
            }
            _ => None,
        };
        let tool = match (g.tool_start, g.tool_end.or_else(own_tree)) {
            (Some((ta, a)), Some((tb, b))) if tb > ta => Some(cpu_pct(&a, &b, tb - ta)),
            _ => None,
        };
        let other = match (machine, tool) {
            (Some(m), Some(t)) => Some((m - t - cpu_avg).max(0.0)),
            _ => None,
        };
        let in_window = |t: f64| {
            let from = start.map_or(0.0, |(i, _)| (i - self.t0).as_secs_f64());
            let to = end.map_or(f64::MAX, |(i, _)| (i - self.t0).as_secs_f64());
            t >= from && t <= to + 1.0
        };
        ServerStats {
            pid: self.pid,
            processes: last.map_or(0, |(_, s)| s.processes),
            cpu_avg_pct: cpu_avg,
            cpu_max_pct: g
                .samples
                .iter()
                .filter(|s| in_window(s.0))
                .map(|s| s.2)
                .fold(0.0, f64::max),
            rss_start_bytes: g.first.map_or(0, |(_, s)| s.rss_bytes),
            rss_peak_bytes: g.samples.iter().map(|s| s.1).max().unwrap_or(0),
            rss_end_bytes: last.map_or(0, |(_, s)| s.rss_bytes),
            machine_cpu_pct: machine,
            loadtool_cpu_pct: tool,
            other_cpu_pct: other,
            cores: cores as u32,
            samples: g.samples.clone(),
        }
    }
}

fn own_tree() -> Option<(Instant, TreeSample)> {
    proc::sample_tree(std::process::id()).map(|s| (Instant::now(), s))
}

/// CPU use between two samples, in percent of one core.
pub fn cpu_pct(a: &TreeSample, b: &TreeSample, dt: Duration) -> f64 {
    let secs = dt.as_secs_f64();
    if secs <= 0.0 {
        return 0.0;
    }
    let ticks = b.cpu_ticks.saturating_sub(a.cpu_ticks) as f64;
    ticks / proc::TICKS_PER_SEC / secs * 100.0
}

/// `CPU 143% RSS 210 MiB` for the progress line.
pub fn server_brief(s: Option<&Sampler>) -> String {
    match s.and_then(Sampler::latest) {
        Some((t, cpu)) => format!(
            " | server CPU {cpu:.0}% RSS {:.0} MiB",
            t.rss_bytes as f64 / 1048576.0
        ),
        None => String::new(),
    }
}

/// Waits until every worker has connected or failed all its clients, with a progress
/// line. Returns the seconds it took.
pub async fn connect_phase(
    fleet: &mut Fleet,
    clients: u64,
    deadline_secs: f64,
    sampler: Option<&Sampler>,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(deadline_secs);
    let mut progress = Progress::new();
    loop {
        if !fleet.poll(Duration::from_millis(500)).await {
            bail!("every worker exited before connecting finished");
        }
        let t = fleet.total();
        let secs = started.elapsed().as_secs_f64();
        let done = t.connecting_done;
        let line = format!(
            "connecting: {}/{clients} ok, {} failed, {} dropped, {}/s, {secs:.1} s{}",
            t.connected,
            t.failed,
            t.dropped,
            report::thousands(t.connected as f64 / secs.max(1e-9)),
            server_brief(sampler)
        );
        progress.show(&line, done);
        if done {
            return Ok(t.connect_secs.unwrap_or(secs).min(secs));
        }
        if Instant::now() >= deadline {
            progress.show(&line, true);
            eprintln!("connect deadline reached; measuring what is connected");
            return Ok(secs);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_stamps() {
        assert_eq!(utc_stamp(0), "19700101T000000Z");
        assert_eq!(utc_stamp(1_700_000_000), "20231114T221320Z");
        assert_eq!(utc_stamp(951_782_400), "20000229T000000Z");
    }

    #[test]
    fn cpu_percent_of_one_core() {
        let a = TreeSample {
            cpu_ticks: 100,
            ..TreeSample::default()
        };
        let b = TreeSample {
            cpu_ticks: 250,
            ..TreeSample::default()
        };
        // 150 ticks = 1.5 s of CPU in 1 s: 150%.
        assert!((cpu_pct(&a, &b, Duration::from_secs(1)) - 150.0).abs() < 1e-9);
        assert_eq!(cpu_pct(&b, &a, Duration::from_secs(1)), 0.0);
        assert_eq!(cpu_pct(&a, &b, Duration::ZERO), 0.0);
    }
}
