//! Address ranges for `http.trusted_proxies`: proxies usually come from a subnet (a
//! load balancer pool, a Kubernetes pod range), so listing single addresses does not
//! fit. Written here rather than taken from a crate: it is parse and mask, nothing more.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// An address with a prefix length: `10.0.0.0/8`, `fd00::/8`; a bare address is its own
/// /32 or /128.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// Whether `ip` is in the range. IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`, what
    /// a dual-stack listener reports for IPv4 peers) count as their IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Why a range did not parse.
#[derive(Debug, PartialEq, Eq)]
pub struct BadNet(String);

impl fmt::Display for BadNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for IpNet {
    type Err = BadNet;

    fn from_str(s: &str) -> Result<IpNet, BadNet> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| BadNet(format!("{s:?} is not an IP address or CIDR range")))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(p) if p <= max => p,
                _ => {
                    return Err(BadNet(format!(
                        "{s:?}: the prefix length must be 0 to {max}"
                    )))
                }
            },
        };
        // `::ffff:10.0.0.0/104` is 10.0.0.0/8 written as IPv6: keep it as IPv4, the
        // form `contains` compares peers in.
        let canonical = addr.to_canonical();
        if canonical != addr {
            let Some(prefix) = prefix.checked_sub(96) else {
                return Err(BadNet(format!(
                    "{s:?}: a range of IPv4-mapped addresses needs a prefix of at least 96"
                )));
            };
            return Ok(IpNet {
                addr: canonical,
                prefix,
            });
        }
        Ok(IpNet { addr, prefix })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn ranges_contain_their_addresses_only() {
        let n = net("10.1.0.0/16");
        assert!(n.contains(ip("10.1.0.0")) && n.contains(ip("10.1.255.255")));
        assert!(!n.contains(ip("10.2.0.1")) && !n.contains(ip("9.1.0.1")));
        // Host bits in the written range do not matter.
        assert!(net("10.1.2.3/16").contains(ip("10.1.9.9")));
        let one = net("192.0.2.7");
        assert!(one.contains(ip("192.0.2.7")) && !one.contains(ip("192.0.2.8")));
        assert!(net("0.0.0.0/0").contains(ip("203.0.113.9")));
        assert!(
            !net("0.0.0.0/0").contains(ip("2001:db8::1")),
            "v4 range, v6 peer"
        );
        let v6 = net("fd00::/8");
        assert!(v6.contains(ip("fd12:3456::1")) && !v6.contains(ip("fe80::1")));
        assert!(net("::/0").contains(ip("2001:db8::1")));
        assert!(net("2001:db8::1/128").contains(ip("2001:db8::1")));
    }

    #[test]
    fn ipv4_mapped_peers_count_as_ipv4() {
        assert!(net("10.0.0.0/8").contains(ip("::ffff:10.9.8.7")));
        assert!(net("::ffff:10.0.0.0/104").contains(ip("10.1.2.3")));
    }

    #[test]
    fn bad_ranges_are_refused_with_the_input() {
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "10.0.0/8",
            "10.0.0.0/x",
            "host",
            "1.2.3.4/",
            "::ffff:10.0.0.0/64",
        ] {
            let e = bad.parse::<IpNet>().unwrap_err();
            assert!(
                e.to_string().contains(&format!("{:?}", bad.trim())),
                "{bad}: {e}"
            );
        }
    }
}
