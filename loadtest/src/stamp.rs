//! Send-time stamps in payloads: `{"t":<unix nanos>,"s":<sequence>}`. Receivers find
//! stamps in raw frames without parsing them, wherever the server put the payload: as
//! JSON (`"t":123`), inside a JSON string (`\"t\":123`, Pusher) or batched several to a
//! frame (Centrifugo joins pushes with newlines).

use std::time::{SystemTime, UNIX_EPOCH};

/// Nanoseconds since the Unix epoch (0 if the clock is before it).
pub fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The payload for publication `seq`, stamped now.
pub fn payload(seq: u64) -> String {
    payload_at(now_nanos(), seq)
}

pub fn payload_at(t: u64, seq: u64) -> String {
    format!("{{\"t\":{t},\"s\":{seq}}}")
}

/// Calls `found` with every stamp (the `t` value) in `frame`.
pub fn scan(frame: &str, mut found: impl FnMut(u64)) {
    let bytes = frame.as_bytes();
    let mut from = 0;
    while let Some(i) = find(&bytes[from..], b"\"t") {
        let q = from + i; // the opening quote of the key
        from = q + 2;
        // Plain `"t":` or escaped `\"t\":` (JSON inside a JSON string).
        let escaped = q >= 1 && bytes[q - 1] == b'\\';
        let rest = &bytes[from..];
        let value_at = if escaped && rest.starts_with(b"\\\":") {
            from + 3
        } else if !escaped && rest.starts_with(b"\":") {
            from + 2
        } else {
            continue;
        };
        // The key must start an object member.
        let before = if escaped {
            q.checked_sub(2)
        } else {
            q.checked_sub(1)
        };
        if !matches!(before.map(|j| bytes[j]), Some(b'{' | b',' | b' ')) {
            continue;
        }
        let digits = bytes[value_at..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        from = value_at + digits;
        if digits == 0 || digits > 20 {
            continue;
        }
        if let Ok(t) = frame[value_at..value_at + digits].parse::<u64>() {
            found(t);
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Microseconds from stamp `t` to `now` (0 if the stamp is in the future).
pub fn latency_micros(t: u64, now: u64) -> u64 {
    now.saturating_sub(t) / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(frame: &str) -> Vec<u64> {
        let mut v = Vec::new();
        scan(frame, |t| v.push(t));
        v
    }

    #[test]
    fn finds_stamps_in_every_peer_format() {
        let p = payload_at(1_700_000_000_123_456_789, 7);
        assert_eq!(p, "{\"t\":1700000000123456789,\"s\":7}");
        // Centrifugo pushes, two per frame.
        let herald = format!(
            "{{\"push\":{{\"channel\":\"c\",\"pub\":{{\"data\":{},\"offset\":1}}}}}}\n\
             {{\"push\":{{\"channel\":\"c\",\"pub\":{{\"data\":{},\"offset\":2}}}}}}",
            payload_at(11, 1),
            payload_at(22, 2)
        );
        assert_eq!(all(&herald), vec![11, 22]);
        // Pusher: the payload is a JSON string inside JSON.
        let pusher = r#"{"event":"m","channel":"c","data":"{\"t\":33,\"s\":3}"}"#;
        assert_eq!(all(pusher), vec![33]);
        // socket.io event and raw (nchan, pushpin).
        assert_eq!(all(r#"42["m",{"t":44,"s":4}]"#), vec![44]);
        assert_eq!(all(&payload_at(55, 5)), vec![55]);
    }

    #[test]
    fn ignores_lookalikes_and_garbage() {
        assert!(all(r#"{"at":5,"st":6}"#).is_empty());
        assert!(all(r#"{"t":"x"}"#).is_empty());
        assert!(all(r#"{"t":}"#).is_empty());
        assert!(all("t\":1").is_empty());
        assert!(all("").is_empty());
        assert!(all(r#"{"t":99999999999999999999999999}"#).is_empty());
        assert!(all("{}").is_empty());
    }

    #[test]
    fn latency_never_negative() {
        assert_eq!(latency_micros(2_000_000, 5_000_000), 3000);
        assert_eq!(latency_micros(5_000_000, 2_000_000), 0);
    }
}
