//! The HTTP client both senders use, and reading a response's Retry-After.

use std::time::Duration;

use super::service::SetupError;

/// A client for one provider: rustls with the built-in web roots plus `ca_file` (a test
/// server's CA), HTTP/2 negotiated by ALPN (APNs accepts nothing else), one pooled
/// connection multiplexing every concurrent send.
pub(super) fn client(ca_key: &'static str, ca_file: &str) -> Result<reqwest::Client, SetupError> {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30))
        .http2_adaptive_window(true)
        .http2_keep_alive_interval(Some(Duration::from_secs(60)))
        .http2_keep_alive_while_idle(true)
        .pool_idle_timeout(Duration::from_secs(600));
    if !ca_file.is_empty() {
        let pem = std::fs::read(ca_file).map_err(|e| SetupError::new(ca_key, e))?;
        let certs =
            reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| SetupError::new(ca_key, e))?;
        if certs.is_empty() {
            return Err(SetupError::new(ca_key, "no PEM certificate in the file"));
        }
        for c in certs {
            b = b.add_root_certificate(c);
        }
    }
    b.build().map_err(|e| SetupError::new(ca_key, e))
}

/// `Retry-After` in seconds (the HTTP-date form is not used by APNs or FCM and is
/// ignored: the dispatcher's backoff applies).
pub(super) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    let secs: u64 = v.trim().parse().ok()?;
    // A day at most: a broken header must not park a job for years.
    Some(Duration::from_secs(secs.min(86_400)))
}

/// Classifies a transport failure: every one is worth another try later.
pub(super) fn transport_error(e: &reqwest::Error) -> super::SendError {
    let reason = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else {
        "network"
    };
    tracing::debug!(cause = %e, reason, "push request failed");
    super::SendError::Retry {
        reason: reason.into(),
        after: None,
    }
}
