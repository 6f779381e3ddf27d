//! The result of one scenario run against one server: JSON (the whole record), a
//! Markdown table row (the headline figures), and the `report` command that joins
//! several runs into one table and one plot.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use serde::{Deserialize, Serialize};

use crate::hist::Summary;
use crate::plot;

/// The server's resource use over the run, from /proc (the process and its children).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ServerStats {
    pub pid: u32,
    /// Processes in the tree at the last sample.
    pub processes: usize,
    /// CPU over the measured phase, in percent of one core (200 = two cores busy).
    pub cpu_avg_pct: f64,
    pub cpu_max_pct: f64,
    pub rss_start_bytes: u64,
    pub rss_peak_bytes: u64,
    pub rss_end_bytes: u64,
    /// The whole machine's CPU over the measured phase (server, load tool and anything
    /// else running), in percent of one core; at most 100 × `cores`.
    #[serde(default)]
    pub machine_cpu_pct: Option<f64>,
    #[serde(default)]
    pub cores: u32,
    /// herald-loadtest itself (coordinator and workers) over the measured phase.
    #[serde(default)]
    pub loadtool_cpu_pct: Option<f64>,
    /// The rest: machine - server - load tool (other processes on the machine).
    #[serde(default)]
    pub other_cpu_pct: Option<f64>,
    /// One sample per second: (seconds since the run started, RSS bytes, CPU %).
    pub samples: Vec<(f64, u64, f64)>,
}

/// One scenario run against one server.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunResult {
    pub scenario: String,
    /// `herald`, `nchan`, ...
    pub server: String,
    pub unix_time: u64,
    /// The run's parameters, as given.
    pub params: serde_json::Value,
    pub clients: u64,
    pub connected: u64,
    pub connect_errors: u64,
    pub errors: BTreeMap<String, u64>,
    pub first_error: Option<String>,
    /// Clients lost after connecting.
    pub dropped: u64,
    pub first_drop: Option<String>,
    pub connect_secs: f64,
    pub connects_per_sec: f64,
    /// Length of the measured (publishing or reading) phase.
    pub duration_secs: f64,
    /// Offered publications (or history pages) per second.
    pub target_rate: f64,
    /// Publications (or history requests) made in the measured phase.
    pub published: u64,
    pub publish_errors: u64,
    /// Send slots dropped because the sender fell too far behind.
    pub publish_skipped: u64,
    pub publish_first_error: Option<String>,
    pub publishes_per_sec: f64,
    /// Stamped messages received by all clients.
    pub deliveries: u64,
    /// What every subscriber should have received.
    pub deliveries_expected: Option<u64>,
    pub delivered_pct: Option<f64>,
    pub deliveries_per_sec: f64,
    /// Publish-to-deliver latency (history: request latency).
    pub latency: Option<Summary>,
    /// TCP connect to subscribed.
    pub connect_latency: Option<Summary>,
    /// Publish HTTP request to response.
    pub publish_call_latency: Option<Summary>,
    pub server_stats: Option<ServerStats>,
    /// Scenario-specific figures (history: `pages_per_sec`, `publications_per_sec`).
    pub extra: BTreeMap<String, f64>,
}

impl RunResult {
    /// Errors of every kind: connects, publishes, replies.
    pub fn error_count(&self) -> u64 {
        self.connect_errors + self.publish_errors
    }
}

fn ms(v: Option<f64>) -> String {
    match v {
        None => "n/a".into(),
        Some(x) if x >= 100.0 => format!("{x:.0}"),
        Some(x) if x >= 10.0 => format!("{x:.1}"),
        Some(x) => format!("{x:.2}"),
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// `12,345` style for counts and rates.
pub fn thousands(v: f64) -> String {
    let n = v.round() as i64;
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

fn cpu_rss(r: &RunResult) -> (String, String) {
    match &r.server_stats {
        Some(s) => (
            match (s.loadtool_cpu_pct, s.other_cpu_pct) {
                (Some(t), Some(o)) => {
                    format!("{:.0}% (tool {t:.0}%, other {o:.0}%)", s.cpu_avg_pct)
                }
                _ => format!("{:.0}%", s.cpu_avg_pct),
            },
            mib(s.rss_peak_bytes),
        ),
        None => ("n/a".into(), "n/a".into()),
    }
}

/// The Markdown table header for a scenario.
pub fn header(scenario: &str) -> String {
    let (cols, n) = match scenario {
        "connect" => (
            "| server | connections | connected | connects/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | server CPU | server RSS | errors |",
            12,
        ),
        "history" => (
            "| server | channels × kept | readers | pages/s | publications/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | server CPU | server RSS | errors |",
            13,
        ),
        _ => (
            "| server | subscribers | publications/s (target) | deliveries/s | delivered | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | server CPU | server RSS | errors | drops |",
            14,
        ),
    };
    format!("{cols}\n|{}", "---|".repeat(n))
}

/// One Markdown table row with the headline figures (columns as in [`header`]).
pub fn markdown_row(r: &RunResult) -> String {
    let l = r.latency.as_ref();
    let lat = [
        ms(l.map(|s| s.p50_ms)),
        ms(l.map(|s| s.p90_ms)),
        ms(l.map(|s| s.p99_ms)),
        ms(l.map(|s| s.p999_ms)),
        ms(l.map(|s| s.max_ms)),
    ]
    .join(" | ");
    let (cpu, rss) = cpu_rss(r);
    match r.scenario.as_str() {
        "connect" => {
            let c = r.connect_latency.as_ref();
            let lat = [
                ms(c.map(|s| s.p50_ms)),
                ms(c.map(|s| s.p90_ms)),
                ms(c.map(|s| s.p99_ms)),
                ms(c.map(|s| s.p999_ms)),
                ms(c.map(|s| s.max_ms)),
            ]
            .join(" | ");
            format!(
                "| {} | {} | {} | {} | {lat} | {cpu} | {rss} | {} |",
                r.server,
                thousands(r.clients as f64),
                thousands(r.connected as f64),
                thousands(r.connects_per_sec),
                r.error_count()
            )
        }
        "history" => format!(
            "| {} | {} × {} | {} | {} | {} | {lat} | {cpu} | {rss} | {} |",
            r.server,
            r.extra.get("channels").copied().unwrap_or(0.0),
            thousands(r.extra.get("history_len").copied().unwrap_or(0.0)),
            r.clients,
            thousands(r.extra.get("pages_per_sec").copied().unwrap_or(0.0)),
            thousands(r.extra.get("publications_per_sec").copied().unwrap_or(0.0)),
            r.error_count()
        ),
        _ => {
            let delivered = r.delivered_pct.map_or("n/a".into(), |p| format!("{p:.2}%"));
            format!(
                "| {} | {} | {} ({}) | {} | {delivered} | {lat} | {cpu} | {rss} | {} | {} |",
                r.server,
                thousands(r.connected as f64),
                thousands(r.publishes_per_sec),
                thousands(r.target_rate),
                thousands(r.deliveries_per_sec),
                r.error_count(),
                r.dropped
            )
        }
    }
}

/// Header and one row per result.
pub fn table(results: &[RunResult]) -> String {
    let scenario = results.first().map_or("broadcast", |r| r.scenario.as_str());
    let mut out = header(scenario);
    for r in results {
        out.push('\n');
        out.push_str(&markdown_row(r));
    }
    out.push('\n');
    out
}

/// Writes `<base>.json`, `<base>.md` and `<base>.png` and prints the table.
pub fn write_all(results: &[RunResult], base: &Path, title: &str) -> anyhow::Result<()> {
    if let Some(dir) = base.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {dir:?}"))?;
        }
    }
    let json_path = with_ext(base, "json");
    let json = if results.len() == 1 {
        serde_json::to_string_pretty(&results[0])?
    } else {
        serde_json::to_string_pretty(results)?
    };
    std::fs::write(&json_path, json + "\n").with_context(|| format!("writing {json_path:?}"))?;
    let md_path = with_ext(base, "md");
    let md = table(results);
    std::fs::write(&md_path, format!("## {title}\n\n{md}"))
        .with_context(|| format!("writing {md_path:?}"))?;
    let png_path = with_ext(base, "png");
    if let Err(e) = plot::draw(&png_path, title, results) {
        eprintln!("plot: {e:#}");
    }
    eprintln!(
        "wrote {}, {}, {}",
        json_path.display(),
        md_path.display(),
        png_path.display()
    );
    println!("{md}");
    Ok(())
}

fn with_ext(base: &Path, ext: &str) -> PathBuf {
    let mut s = base.as_os_str().to_owned();
    s.push(".");
    s.push(ext);
    PathBuf::from(s)
}

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// JSON results of earlier runs (one result or an array each).
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Output base path: writes BASE.json, BASE.md and BASE.png.
    #[arg(long)]
    pub output: PathBuf,
    #[arg(long, default_value = "herald-loadtest")]
    pub title: String,
}

/// Reads a file holding one result or an array of them.
pub fn read_results(path: &Path) -> anyhow::Result<Vec<RunResult>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path:?}"))?;
    if text.trim_start().starts_with('[') {
        serde_json::from_str(&text).with_context(|| format!("parsing {path:?}"))
    } else {
        Ok(vec![
            serde_json::from_str(&text).with_context(|| format!("parsing {path:?}"))?
        ])
    }
}

/// `herald-loadtest report`: one table and one plot from several runs.
pub fn run(args: ReportArgs) -> anyhow::Result<()> {
    let mut all = Vec::new();
    for p in &args.inputs {
        all.extend(read_results(p)?);
    }
    write_all(&all, &args.output, &args.title)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> RunResult {
        RunResult {
            scenario: "broadcast".into(),
            server: "herald".into(),
            clients: 5000,
            connected: 5000,
            target_rate: 100.0,
            publishes_per_sec: 99.96,
            deliveries_per_sec: 499_800.4,
            delivered_pct: Some(100.0),
            latency: Some(Summary {
                count: 10,
                min_ms: 0.1,
                mean_ms: 1.0,
                p50_ms: 1.234,
                p90_ms: 12.345,
                p99_ms: 123.4,
                p999_ms: 200.0,
                max_ms: 250.0,
                spectrum: vec![(0.0, 0.1), (100.0, 250.0)],
            }),
            server_stats: Some(ServerStats {
                cpu_avg_pct: 151.2,
                rss_peak_bytes: 200 * 1024 * 1024,
                ..ServerStats::default()
            }),
            publish_errors: 2,
            connect_errors: 1,
            dropped: 3,
            ..RunResult::default()
        }
    }

    #[test]
    fn broadcast_row_has_the_headline_figures() {
        let row = markdown_row(&sample());
        assert_eq!(
            row,
            "| herald | 5,000 | 100 (100) | 499,800 | 100.00% | 1.23 | 12.3 | 123 | 200 | 250 | 151% | 200 MiB | 3 | 3 |"
        );
        let t = table(&[sample(), sample()]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4);
        // Every row has as many cells as the header.
        let cells = |l: &str| l.matches('|').count();
        assert!(lines.iter().all(|l| cells(l) == cells(lines[0])), "{t}");
    }

    #[test]
    fn other_scenarios_keep_column_counts() {
        for scenario in ["connect", "history", "chat"] {
            let mut r = sample();
            r.scenario = scenario.into();
            r.latency = None;
            let t = table(&[r]);
            let lines: Vec<&str> = t.lines().collect();
            let cells = |l: &str| l.matches('|').count();
            assert_eq!(cells(lines[0]), cells(lines[1]), "{scenario}");
            assert_eq!(cells(lines[0]), cells(lines[2]), "{scenario}: {t}");
        }
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(thousands(1_234_567.0), "1,234,567");
        assert_eq!(thousands(-4321.0), "-4,321");
    }

    #[test]
    fn results_round_trip_through_json() {
        let dir = std::env::temp_dir().join(format!("hl-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp");
        let one = dir.join("one.json");
        std::fs::write(&one, serde_json::to_string(&sample()).expect("json")).expect("write");
        let many = dir.join("many.json");
        std::fs::write(
            &many,
            serde_json::to_string(&[sample(), sample()]).expect("json"),
        )
        .expect("write");
        assert_eq!(read_results(&one).expect("one").len(), 1);
        assert_eq!(read_results(&many).expect("many").len(), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
