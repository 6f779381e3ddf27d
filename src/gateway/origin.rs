//! Which browser pages may open a WebSocket (`http.allowed_origins`).
//!
//! A browser attaches `Origin` to every WebSocket handshake and lets any page open one
//! to any host, with the user's cookies: without this check a hostile page could talk
//! to Herald as the visitor (cross-site WebSocket hijacking). Clients that are not
//! browsers send no `Origin` and are not affected.

use actix_web::http::header::{HeaderMap, HOST, ORIGIN};

/// Whether the handshake's `Origin` is acceptable:
/// - no `Origin` header: yes (not a browser);
/// - `allowed` contains `*`: yes;
/// - an entry equals the origin (ASCII case-insensitive; `*` in an entry matches any
///   run of characters, e.g. `https://*.example.com`): yes;
/// - `allowed` is empty: only the same origin, i.e. the origin's host equals `Host`.
pub fn allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let Some(origin) = headers.get(ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let origin = origin.trim().to_ascii_lowercase();
    if allowed.is_empty() {
        let host = headers
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .map(|h| h.trim().to_ascii_lowercase());
        let origin_host = origin
            .strip_prefix("https://")
            .or_else(|| origin.strip_prefix("http://"));
        return matches!((origin_host, host), (Some(o), Some(h)) if o == h);
    }
    allowed
        .iter()
        .any(|a| a == "*" || glob(&a.to_ascii_lowercase(), &origin))
}

/// `*` matches any run of characters; everything else matches itself.
fn glob(pattern: &str, s: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == s,
        Some((head, rest)) => {
            let Some(mut tail) = s.strip_prefix(head) else {
                return false;
            };
            loop {
                if glob(rest, tail) {
                    return true;
                }
                let mut chars = tail.chars();
                if chars.next().is_none() {
                    return false;
                }
                tail = chars.as_str();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::HeaderValue;

    fn req(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(HOST, HeaderValue::from_str(host).unwrap());
        if let Some(o) = origin {
            h.insert(ORIGIN, HeaderValue::from_str(o).unwrap());
        }
        h
    }

    #[test]
    fn rules() {
        let list = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(allowed(&req(None, "h:1"), &list(&["https://app.example"])));
        assert!(allowed(&req(Some("http://h:1"), "h:1"), &[]));
        assert!(!allowed(&req(Some("http://evil"), "h:1"), &[]));
        assert!(!allowed(&req(Some("null"), "h:1"), &[]));
        assert!(allowed(&req(Some("http://evil"), "h:1"), &list(&["*"])));
        let l = list(&["https://*.example.com", "https://App.test"]);
        assert!(allowed(&req(Some("https://a.example.com"), "h"), &l));
        assert!(allowed(&req(Some("https://app.test"), "h"), &l));
        assert!(!allowed(&req(Some("https://example.com.evil"), "h"), &l));
        assert!(!allowed(&req(Some("https://a.example.com.evil"), "h"), &l));
        assert!(!allowed(&req(Some("http://a.example.com"), "h"), &l));
    }

    #[test]
    fn globs() {
        assert!(glob("a*c", "abbc"));
        assert!(glob("*", ""));
        assert!(!glob("a*c", "abcd"));
    }
}
