//! Redis Cluster routing (`broker.redis_cluster = true`): which master owns a channel,
//! and the key names that keep everything of a channel in one hash slot.
//!
//! Redis Cluster hashes a key to one of 16384 slots by CRC16 of its hash tag (the text
//! between the first `{` and the next `}`), and a Lua script may only touch keys of one
//! slot. So in cluster mode every key of a channel (or user) carries the same tag:
//! `{<name>}` when the name has no brace, `{#<hash>}:<name>` otherwise (a brace in the
//! name would end the tag early, or leave it empty). The sharded pub/sub channel carries
//! the tag too, so `SPUBLISH` from the publish script stays in the script's slot.

use std::collections::HashMap;

/// Slots of a Redis Cluster.
pub const SLOTS: usize = 16384;

/// CRC16-CCITT (XMODEM), the checksum Redis Cluster hashes keys with.
fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The slot of a key, by Redis Cluster's rule (hash tag if non-empty, else the key).
pub fn key_slot(key: &str) -> usize {
    let b = key.as_bytes();
    let hashed = match b.iter().position(|&c| c == b'{') {
        Some(open) => match b[open + 1..].iter().position(|&c| c == b'}') {
            Some(len) if len > 0 => &b[open + 1..open + 1 + len],
            _ => b,
        },
        None => b,
    };
    usize::from(crc16(hashed)) % SLOTS
}

/// The tag text (without braces) of a channel or user name.
fn tag_text(name: &str) -> String {
    if name.is_empty() || name.contains(['{', '}']) {
        format!("#{:016x}", super::redis::stable_hash(name))
    } else {
        name.to_string()
    }
}

/// The part of a key after `<prefix>:<kind>:` for `name`: `{name}`, or
/// `{#hash}:name` when the name cannot be its own tag. Distinct names give distinct
/// suffixes: the first form ends at its only `}`, the second continues after it.
pub fn tagged(name: &str) -> String {
    let t = tag_text(name);
    if t == name {
        format!("{{{name}}}")
    } else {
        format!("{{{t}}}:{name}")
    }
}

/// The inverse of [`tagged`] (for pub/sub channel names coming back from Redis).
pub fn untagged(suffix: &str) -> Option<&str> {
    let inner = suffix.strip_prefix('{')?;
    let close = inner.find('}')?;
    let rest = &inner[close + 1..];
    if rest.is_empty() {
        Some(&inner[..close])
    } else {
        rest.strip_prefix(':')
    }
}

/// The slot of everything about `name` (its keys all carry [`tagged`]).
pub fn name_slot(name: &str) -> usize {
    key_slot(&tagged(name))
}

/// One master of the cluster and the slot ranges it serves.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Master {
    pub host: String,
    pub port: u16,
}

/// Reads a `CLUSTER SLOTS` reply into the masters and, for each slot, the index of its
/// master. `seed_host` replaces an empty host (a node that does not know its own
/// address answers `""`). Fails if a slot has no master: the cluster is not usable.
pub fn parse_cluster_slots(
    reply: &redis::Value,
    seed_host: &str,
) -> Result<(Vec<Master>, Vec<u16>), String> {
    use redis::Value as V;
    let V::Array(ranges) = reply else {
        return Err(format!("CLUSTER SLOTS: not an array: {reply:?}"));
    };
    let mut masters: Vec<Master> = Vec::new();
    let mut index: HashMap<Master, u16> = HashMap::new();
    let mut owner: Vec<Option<u16>> = vec![None; SLOTS];
    for range in ranges {
        let V::Array(r) = range else {
            return Err(format!("CLUSTER SLOTS: bad range {range:?}"));
        };
        let (Some(V::Int(start)), Some(V::Int(end)), Some(V::Array(node))) =
            (r.first(), r.get(1), r.get(2))
        else {
            return Err(format!("CLUSTER SLOTS: bad range {range:?}"));
        };
        let host = match node.first() {
            Some(V::BulkString(h)) if !h.is_empty() => String::from_utf8_lossy(h).into_owned(),
            Some(V::SimpleString(h)) if !h.is_empty() => h.clone(),
            _ => seed_host.to_string(),
        };
        let Some(V::Int(port)) = node.get(1) else {
            return Err(format!("CLUSTER SLOTS: bad node {node:?}"));
        };
        let port = u16::try_from(*port).map_err(|_| format!("CLUSTER SLOTS: port {port}"))?;
        let m = Master { host, port };
        let i = match index.get(&m) {
            Some(i) => *i,
            None => {
                masters.push(m.clone());
                let i = (masters.len() - 1) as u16;
                index.insert(m, i);
                i
            }
        };
        let (start, end) = (*start as usize, *end as usize);
        if start > end || end >= SLOTS {
            return Err(format!("CLUSTER SLOTS: bad range {start}-{end}"));
        }
        for o in &mut owner[start..=end] {
            *o = Some(i);
        }
    }
    let slots = owner
        .into_iter()
        .enumerate()
        .map(|(s, o)| o.ok_or_else(|| format!("slot {s} has no master (cluster not ready?)")))
        .collect::<Result<Vec<u16>, String>>()?;
    Ok((masters, slots))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // Values from `CLUSTER KEYSLOT` of redis-server 7.
        assert_eq!(key_slot("foo"), 12182);
        assert_eq!(key_slot("123456789"), 12739);
        assert_eq!(key_slot("{user1000}.following"), key_slot("user1000"));
        assert_eq!(key_slot("{}x"), usize::from(crc16(b"{}x")) % SLOTS);
    }

    #[test]
    fn tags_round_trip_and_share_a_slot() {
        for name in ["news", "chat:room1", "a}b", "{x}", "", "}{", "a{b:c"] {
            let t = tagged(name);
            assert_eq!(untagged(&t), Some(name), "{name:?} -> {t:?}");
            let keys = [
                format!("h:meta:{t}"),
                format!("h:stream:{t}"),
                format!("h:ch:{t}"),
            ];
            assert!(
                keys.iter().all(|k| key_slot(k) == name_slot(name)),
                "{name:?}"
            );
        }
        assert_eq!(tagged("news"), "{news}");
        assert_ne!(tagged("a}b"), tagged("a"));
    }
}
