//! Rate limits as token buckets refilled continuously: one per connection (owned by
//! its session) and keyed ones shared by a node (per peer IP, per user).

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::cluster::rate::RedisBuckets;
use crate::cluster::redis::Redis;
use crate::config::Config;
use crate::ipnet::IpNet;

pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// `rate` commands per second with bursts of `burst`; a rate of 0 never limits.
    pub fn new(rate: u32, burst: u32) -> Self {
        TokenBucket {
            rate: rate as f64,
            burst: burst as f64,
            tokens: burst as f64,
            last: Instant::now(),
        }
    }

    pub fn allow(&mut self) -> bool {
        self.allow_at(Instant::now())
    }

    /// Whether the bucket would be full at `now`, i.e. forgetting it changes nothing.
    fn full_at(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens + elapsed * self.rate >= self.burst
    }

    fn allow_at(&mut self, now: Instant) -> bool {
        if self.rate == 0.0 {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The node-wide limits every session consults.
pub struct SharedLimits {
    /// WebSocket upgrades per peer IP.
    pub per_ip: KeyedBuckets<IpAddr>,
    /// Commands per user, over all the user's connections on this node; in cluster
    /// mode the fallback while Redis cannot answer.
    pub per_user: KeyedBuckets<Arc<str>>,
    /// Cluster mode: commands per user over all the user's connections on every node.
    pub per_user_cluster: Option<RedisBuckets>,
    /// `http.trusted_proxies`.
    trusted_proxies: Vec<IpNet>,
}

impl SharedLimits {
    /// With `redis` (cluster mode) the per-user limit is kept in Redis.
    pub fn new(config: &Config, redis: Option<Arc<Redis>>) -> Self {
        let c = &config.client;
        SharedLimits {
            trusted_proxies: config
                .http
                .trusted_proxies
                .iter()
                .filter_map(|p| p.trim().parse().ok())
                .collect(),
            per_ip: KeyedBuckets::new(c.connect_rate_per_ip, c.connect_burst_per_ip),
            per_user: KeyedBuckets::new(c.user_command_rate, c.user_command_burst),
            per_user_cluster: redis.filter(|_| c.user_command_rate > 0).map(|r| {
                RedisBuckets::new(r, "rate:user", c.user_command_rate, c.user_command_burst)
            }),
        }
    }

    /// The address the per-IP limit counts a request against: the socket peer, or, when
    /// the peer is a trusted proxy, the last `X-Forwarded-For` entry that is not one
    /// (proxies append, so entries left of it may be forged by the client).
    pub fn client_ip(&self, peer: IpAddr, forwarded_for: &[&str]) -> IpAddr {
        if !self.is_trusted_proxy(peer) {
            return peer;
        }
        let mut client = peer;
        for entry in forwarded_for.iter().rev().flat_map(|h| h.rsplit(',')) {
            match entry.trim().parse::<IpAddr>() {
                Ok(ip) => {
                    client = ip;
                    if !self.is_trusted_proxy(ip) {
                        break;
                    }
                }
                // An unparsable entry ends the chain we can trust.
                Err(_) => break,
            }
        }
        client
    }

    fn is_trusted_proxy(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|n| n.contains(ip))
    }

    /// Takes one of `user`'s command tokens; false if the user is over its rate. A
    /// Redis failure falls back to this node's bucket: an outage must not block every
    /// command, and the node's bucket still bounds a runaway client.
    pub async fn allow_user(&self, user: &Arc<str>) -> bool {
        if let Some(cluster) = &self.per_user_cluster {
            match cluster.allow(user).await {
                Ok(allowed) => return allowed,
                Err(e) => {
                    tracing::debug!(cause = %e, "cluster rate limit unavailable; using the node's")
                }
            }
        }
        self.per_user.allow(user)
    }
}

/// Buckets shared by every session on the node, one per key. Idle full buckets are
/// dropped now and then so that a stream of distinct keys (a scan from many addresses)
/// cannot grow the map without bound.
pub struct KeyedBuckets<K> {
    rate: u32,
    burst: u32,
    inner: Mutex<Keyed<K>>,
}

struct Keyed<K> {
    buckets: HashMap<K, TokenBucket>,
    last_sweep: Instant,
}

/// How often the map is swept for buckets that have refilled completely.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

impl<K: Hash + Eq + Clone> KeyedBuckets<K> {
    /// A rate of 0 turns the limit off.
    pub fn new(rate: u32, burst: u32) -> Self {
        KeyedBuckets {
            rate,
            burst,
            inner: Mutex::new(Keyed {
                buckets: HashMap::new(),
                last_sweep: Instant::now(),
            }),
        }
    }

    pub fn enabled(&self) -> bool {
        self.rate > 0
    }

    pub fn allow(&self, key: &K) -> bool {
        if self.rate == 0 {
            return true;
        }
        let now = Instant::now();
        let mut g = self.inner.lock();
        if now.saturating_duration_since(g.last_sweep) >= SWEEP_EVERY {
            g.last_sweep = now;
            g.buckets.retain(|_, b| !b.full_at(now));
        }
        let (rate, burst) = (self.rate, self.burst);
        g.buckets
            .entry(key.clone())
            .or_insert_with(|| TokenBucket::new(rate, burst))
            .allow_at(now)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.lock().buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_refill() {
        let mut b = TokenBucket::new(10, 3);
        let t0 = Instant::now();
        assert!(b.allow_at(t0) && b.allow_at(t0) && b.allow_at(t0));
        assert!(!b.allow_at(t0));
        assert!(b.allow_at(t0 + Duration::from_millis(110)));
        assert!(!b.allow_at(t0 + Duration::from_millis(110)));
    }

    #[test]
    fn zero_rate_is_unlimited() {
        let mut b = TokenBucket::new(0, 0);
        assert!((0..1000).all(|_| b.allow()));
    }

    fn limits(trusted: &[&str]) -> SharedLimits {
        let mut c = Config::load_from(None, "test", Vec::<(String, String)>::new()).unwrap();
        c.http.trusted_proxies = trusted.iter().map(|s| s.to_string()).collect();
        SharedLimits::new(&c, None)
    }

    #[test]
    fn forwarded_for_only_from_trusted_proxies() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let none = limits(&[]);
        assert_eq!(none.client_ip(ip("10.0.0.1"), &["1.2.3.4"]), ip("10.0.0.1"));
        let l = limits(&["10.0.0.1", "10.0.0.2"]);
        // A client's own X-Forwarded-For to Herald directly is ignored.
        assert_eq!(l.client_ip(ip("9.9.9.9"), &["1.2.3.4"]), ip("9.9.9.9"));
        // Through two trusted proxies; the forged left-most entry is not used.
        assert_eq!(
            l.client_ip(ip("10.0.0.1"), &["6.6.6.6, 5.5.5.5", "10.0.0.2"]),
            ip("5.5.5.5")
        );
        assert_eq!(l.client_ip(ip("10.0.0.1"), &[]), ip("10.0.0.1"));
        assert_eq!(l.client_ip(ip("10.0.0.1"), &["junk"]), ip("10.0.0.1"));
        assert_eq!(l.client_ip(ip("10.0.0.1"), &["::1"]), ip("::1"));
    }

    #[test]
    fn trusted_proxies_may_be_ranges() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let l = limits(&["10.0.0.0/8", "fd00::/8"]);
        assert_eq!(
            l.client_ip(ip("10.3.2.1"), &["5.5.5.5, 10.200.0.9"]),
            ip("5.5.5.5"),
            "both hops are in the range"
        );
        assert_eq!(l.client_ip(ip("fd00::7"), &["5.5.5.5"]), ip("5.5.5.5"));
        assert_eq!(l.client_ip(ip("11.0.0.1"), &["5.5.5.5"]), ip("11.0.0.1"));
    }

    #[test]
    fn keyed_buckets_are_independent() {
        let k = KeyedBuckets::new(1, 2);
        assert!(k.allow(&"a") && k.allow(&"a"));
        assert!(!k.allow(&"a"));
        assert!(k.allow(&"b"));
        assert_eq!(k.len(), 2);
        let off = KeyedBuckets::new(0, 0);
        assert!((0..100).all(|_| off.allow(&"a")));
        assert_eq!(off.len(), 0);
    }
}
