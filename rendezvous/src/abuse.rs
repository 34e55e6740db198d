//! Pieces shared by the limits against abuse: which addresses count as one network, and
//! warnings that stay readable under attack.

use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

/// The network `ip` belongs to for limits: IPv4 masked to `v4_bits`, IPv6 to its /64 (one
/// host is usually given a whole /64, so per address would be no limit at all). An IPv4-mapped
/// IPv6 address counts as IPv4.
pub fn network_of(ip: IpAddr, v4_bits: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let mask = u32::MAX
                .checked_shl(32 - u32::from(v4_bits.min(32)))
                .unwrap_or(0);
            IpAddr::V4((bits & mask).into())
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => network_of(IpAddr::V4(v4), v4_bits),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// At most one warning per period; the ones held back are counted into the next.
#[derive(Debug)]
pub struct LogThrottle {
    every: Duration,
    last: Option<Instant>,
    held: u64,
}

impl LogThrottle {
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            last: None,
            held: 0,
        }
    }

    /// `Some(n)`: log now, saying `n` more like it were held back since the last one.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        if self.last.is_some_and(|t| now < t + self.every) {
            self.held += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.held))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn networks_group_by_prefix() {
        assert_eq!(network_of(ip("192.0.2.77"), 24), ip("192.0.2.0"));
        assert_eq!(network_of(ip("192.0.2.77"), 32), ip("192.0.2.77"));
        assert_eq!(network_of(ip("192.0.2.77"), 0), ip("0.0.0.0"));
        assert_eq!(network_of(ip("198.51.100.200"), 20), ip("198.51.96.0"));
        assert_eq!(network_of(ip("::ffff:192.0.2.77"), 24), ip("192.0.2.0"));
        assert_eq!(
            network_of(ip("2001:db8:1:2:aa::1"), 24),
            ip("2001:db8:1:2::")
        );
    }

    #[test]
    fn the_throttle_counts_what_it_held_back() {
        let mut t = LogThrottle::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(t.allow(t0), Some(0));
        for i in 1..=5 {
            assert_eq!(t.allow(t0 + Duration::from_secs(i)), None);
        }
        assert_eq!(t.allow(t0 + Duration::from_secs(10)), Some(5));
        assert_eq!(t.allow(t0 + Duration::from_secs(11)), None);
    }
}
