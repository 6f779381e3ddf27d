//! Sampling another process through /proc (Linux only): resident memory, open files and
//! CPU time, of one process or of a process and all its descendants (nginx, pushpin and
//! their worker processes).

use std::fs;

use anyhow::{bail, Context};
use serde::Serialize;

/// One look at the server process.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sample {
    /// `VmRSS` from /proc/<pid>/status, in bytes.
    pub rss_bytes: u64,
    /// Entries in /proc/<pid>/fd (sockets, listeners, files); `None` if not readable.
    pub open_fds: Option<u64>,
}

/// Reads the resident set size and the open file count of `pid`.
pub fn sample(pid: u32) -> anyhow::Result<Sample> {
    Ok(Sample {
        rss_bytes: rss_bytes(pid)?,
        open_fds: open_fds(pid),
    })
}

/// `VmRSS` of `pid` in bytes.
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_vm_rss(&status).with_context(|| format!("no VmRSS line in {path}"))
}

fn parse_vm_rss(status: &str) -> anyhow::Result<u64> {
    let Some(line) = status.lines().find(|l| l.starts_with("VmRSS:")) else {
        bail!("VmRSS missing");
    };
    // "VmRSS:	   12345 kB"
    let mut parts = line["VmRSS:".len()..].split_whitespace();
    let kib: u64 = parts.next().context("VmRSS has no value")?.parse()?;
    match parts.next() {
        Some("kB") => Ok(kib * 1024),
        other => bail!("unexpected VmRSS unit {other:?}"),
    }
}

/// This process's soft limit on open files ("Max open files" in /proc/self/limits).
pub fn own_fd_limit() -> Option<u64> {
    let limits = fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Clock ticks per second of /proc/<pid>/stat times (USER_HZ: 100 on Linux's ABIs).
pub const TICKS_PER_SEC: f64 = 100.0;

/// `(ppid, utime + stime)` from the text of /proc/<pid>/stat.
pub fn parse_stat(stat: &str) -> Option<(u32, u64)> {
    // "pid (comm) state ppid ... utime stime": comm may hold spaces and parentheses,
    // so fields are counted after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state(0) ppid(1) ... utime(11) stime(12).
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((ppid, utime + stime))
}

/// `pid` and all its descendants that are alive now.
pub fn tree(pid: u32) -> Vec<u32> {
    let mut parent_of = Vec::new();
    if let Ok(entries) = fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Some((ppid, _)) = fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .as_deref()
                .and_then(parse_stat)
            {
                parent_of.push((p, ppid));
            }
        }
    }
    descendants(pid, &parent_of)
}

fn descendants(root: u32, parent_of: &[(u32, u32)]) -> Vec<u32> {
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let cur = out[i];
        out.extend(
            parent_of
                .iter()
                .filter(|(p, pp)| *pp == cur && *p != cur)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    out
}

/// `(busy, total)` ticks of the whole machine from the text of /proc/stat.
pub fn parse_machine_ticks(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    if v.len() < 4 {
        return None;
    }
    // user nice system idle iowait irq softirq steal ...; guest time is inside user.
    let total: u64 = v.iter().take(8).sum();
    let idle = v[3] + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// Busy and total CPU ticks of the whole machine (all cores).
pub fn machine_ticks() -> Option<(u64, u64)> {
    parse_machine_ticks(&fs::read_to_string("/proc/stat").ok()?)
}

/// RSS and CPU ticks of a process tree, added up.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TreeSample {
    pub processes: usize,
    pub rss_bytes: u64,
    pub cpu_ticks: u64,
}

/// Samples `pid` and its descendants; `None` if `pid` itself is gone.
pub fn sample_tree(pid: u32) -> Option<TreeSample> {
    let mut s = TreeSample::default();
    for p in tree(pid) {
        let Some((_, ticks)) = fs::read_to_string(format!("/proc/{p}/stat"))
            .ok()
            .as_deref()
            .and_then(parse_stat)
        else {
            if p == pid {
                return None;
            }
            continue;
        };
        s.processes += 1;
        s.cpu_ticks += ticks;
        s.rss_bytes += rss_bytes(p).unwrap_or(0);
    }
    Some(s)
}

fn open_fds(pid: u32) -> Option<u64> {
    let entries = fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    Some(entries.count() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_vm_rss() {
        let status = "Name:\therald\nVmPeak:\t  200 kB\nVmRSS:\t   12345 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss(status).ok(), Some(12345 * 1024));
        assert!(parse_vm_rss("Name:\tx\n").is_err());
    }

    #[test]
    fn parses_stat_with_odd_names() {
        let stat = "42 (a) b (c)) S 7 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 1 2 3";
        assert_eq!(parse_stat(stat), Some((7, 300)));
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S"), None);
    }

    #[test]
    fn parses_machine_ticks() {
        let stat = "cpu  100 5 50 800 20 1 2 3 0 0\ncpu0 1 2 3 4\n";
        assert_eq!(parse_machine_ticks(stat), Some((161, 981)));
        assert_eq!(parse_machine_ticks("intr 1 2"), None);
        assert!(machine_ticks().is_some_and(|(b, t)| b <= t));
    }

    #[test]
    fn finds_descendants() {
        let links = [(2, 1), (3, 2), (4, 1), (5, 9), (1, 0)];
        let mut d = descendants(1, &links);
        d.sort_unstable();
        assert_eq!(d, vec![1, 2, 3, 4]);
        let own = sample_tree(std::process::id()).expect("own process");
        assert!(own.processes >= 1 && own.rss_bytes > 0);
    }

    #[test]
    fn samples_this_process() {
        let s = sample(std::process::id()).expect("own /proc entry");
        assert!(s.rss_bytes > 0);
        assert!(s.open_fds.is_some_and(|n| n > 0));
        assert!(own_fd_limit().is_some_and(|n| n > 0));
    }
}
