//! Reads one gauge from Herald's Prometheus endpoint, as a server-side cross-check of
//! what the clients believe. A bare HTTP/1.1 GET: enough for a loopback server.

use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Value of the unlabelled metric `name` at `url` (`http://host:port/path`).
pub async fn scrape_gauge(url: &str, name: &str) -> anyhow::Result<f64> {
    let body = tokio::time::timeout(Duration::from_secs(10), get(url))
        .await
        .context("metrics request timed out")??;
    find_value(&body, name).with_context(|| format!("{name} not found at {url}"))
}

async fn get(url: &str) -> anyhow::Result<String> {
    let rest = url
        .strip_prefix("http://")
        .context("metrics URL must start with http://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/metrics"),
    };
    let mut stream = TcpStream::connect(authority)
        .await
        .with_context(|| format!("connecting to {authority}"))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("malformed HTTP response");
    };
    if !head.starts_with("HTTP/1.1 200") {
        bail!(
            "metrics endpoint answered {:?}",
            head.lines().next().unwrap_or("")
        );
    }
    Ok(body.to_owned())
}

fn find_value(body: &str, name: &str) -> Option<f64> {
    body.lines().find_map(|line| {
        let value = line.strip_prefix(name)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_unlabelled_gauge() {
        let body =
            "# TYPE herald_connections gauge\nherald_connections_total 3\nherald_connections 42\n";
        assert_eq!(find_value(body, "herald_connections"), Some(42.0));
        assert_eq!(find_value(body, "herald_missing"), None);
    }
}
