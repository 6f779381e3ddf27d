//! Sampling another process through /proc (Linux only): resident memory and open files.

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
    fn samples_this_process() {
        let s = sample(std::process::id()).expect("own /proc entry");
        assert!(s.rss_bytes > 0);
        assert!(s.open_fds.is_some_and(|n| n > 0));
        assert!(own_fd_limit().is_some_and(|n| n > 0));
    }
}
