//! What one client may take of the web server: open connections (per client and in all), how
//! long a connection may sit without sending a request, and WHEP offers (a token bucket per
//! client and one for everybody). The counting is sans-IO: callers pass the time.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The web server's limits. The defaults suit a small VPS serving a few rooms.
#[derive(Debug, Clone, Copy)]
pub struct WebLimits {
    /// A connection that has not sent a whole request head within this (the first one, or the
    /// next on a kept-alive connection) is closed.
    pub header_timeout: Duration,
    /// No connection lives longer (a body trickled in byte by byte ends here).
    pub max_lifetime: Duration,
    /// Open connections in all, and from one client.
    pub max_connections: usize,
    pub connections_per_client: usize,
    /// WHEP offers: per client, a burst and then so many per second; the same per room and for
    /// everybody.
    pub offers_per_client: Rate,
    pub offers_per_room: Rate,
    pub offers_total: Rate,
}

/// A token bucket's size and refill.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    pub burst: f64,
    pub per_second: f64,
}

impl Default for WebLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            max_lifetime: Duration::from_secs(120),
            max_connections: 1024,
            connections_per_client: 32,
            offers_per_client: Rate {
                burst: 10.0,
                per_second: 1.0,
            },
            offers_per_room: Rate {
                burst: 30.0,
                per_second: 5.0,
            },
            offers_total: Rate {
                burst: 100.0,
                per_second: 20.0,
            },
        }
    }
}

/// The addresses counted as one client: an IPv4 address, or an IPv6 /64.
pub fn client_of(ip: IpAddr) -> IpAddr {
    crate::abuse::network_of(ip, 32)
}

/// Open connections, per client and in all.
pub struct Connections {
    limits: WebLimits,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// One admitted connection; dropping it frees its place.
pub struct ConnectionSlot {
    conns: Arc<Connections>,
    client: IpAddr,
}

impl Connections {
    pub fn new(limits: WebLimits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            open: Mutex::new((0, HashMap::new())),
        })
    }

    /// A place for a connection from `ip`, or `None` when it or everybody is at the limit.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<ConnectionSlot> {
        let client = client_of(ip);
        let mut open = self.open.lock().ok()?;
        let (total, per) = &mut *open;
        let mine = per.entry(client).or_insert(0);
        if *total >= self.limits.max_connections || *mine >= self.limits.connections_per_client {
            if *mine == 0 {
                per.remove(&client);
            }
            return None;
        }
        *mine += 1;
        *total += 1;
        Some(ConnectionSlot {
            conns: self.clone(),
            client,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.lock().map(|o| o.0).unwrap_or(0)
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        if let Ok(mut open) = self.conns.open.lock() {
            let (total, per) = &mut *open;
            *total = total.saturating_sub(1);
            if let Some(n) = per.get_mut(&self.client) {
                *n -= 1;
                if *n == 0 {
                    per.remove(&self.client);
                }
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(rate: Rate, now: Instant) -> Self {
        Self {
            tokens: rate.burst,
            at: now,
        }
    }

    fn refill(&mut self, rate: Rate, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * rate.per_second).min(rate.burst);
        self.at = now;
    }

    /// How long until a token is there (zero when one is).
    fn wait(&self, rate: Rate) -> Duration {
        if self.tokens >= 1.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - self.tokens) / rate.per_second.max(1e-3))
        }
    }
}

/// Most clients whose buckets are remembered; beyond, full (idle) ones are forgotten first.
const MAX_CLIENTS: usize = 4096;

/// WHEP offers per client and in all.
pub struct OfferLimiter {
    limits: WebLimits,
    clients: HashMap<IpAddr, Bucket>,
    rooms: HashMap<u32, Bucket>,
    total: Option<Bucket>,
}

impl OfferLimiter {
    pub fn new(limits: WebLimits) -> Self {
        Self {
            limits,
            clients: HashMap::new(),
            rooms: HashMap::new(),
            total: None,
        }
    }

    /// Takes an offer from `ip` for `room` (its code's bits, when the path holds one) now, or
    /// says how long to wait (`Retry-After`).
    pub fn check(&mut self, now: Instant, ip: IpAddr, room: Option<u32>) -> Result<(), Duration> {
        let l = self.limits;
        let (per, by_room, all) = (l.offers_per_client, l.offers_per_room, l.offers_total);
        // Forget full (idle) buckets once there are many.
        if self.clients.len() >= MAX_CLIENTS {
            self.clients.retain(|_, b| {
                b.refill(per, now);
                b.tokens < per.burst
            });
        }
        if self.rooms.len() >= MAX_CLIENTS {
            self.rooms.retain(|_, b| {
                b.refill(by_room, now);
                b.tokens < by_room.burst
            });
        }
        let mine = self
            .clients
            .entry(client_of(ip))
            .or_insert_with(|| Bucket::full(per, now));
        mine.refill(per, now);
        let mut room = room.map(|r| {
            let b = self
                .rooms
                .entry(r)
                .or_insert_with(|| Bucket::full(by_room, now));
            b.refill(by_room, now);
            b
        });
        let total = self.total.get_or_insert_with(|| Bucket::full(all, now));
        total.refill(all, now);
        let room_wait = room.as_ref().map_or(Duration::ZERO, |b| b.wait(by_room));
        let wait = mine.wait(per).max(total.wait(all)).max(room_wait);
        if wait > Duration::ZERO {
            return Err(wait);
        }
        mine.tokens -= 1.0;
        total.tokens -= 1.0;
        if let Some(b) = room.as_mut() {
            b.tokens -= 1.0;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> WebLimits {
        WebLimits {
            connections_per_client: 2,
            max_connections: 3,
            offers_per_client: Rate {
                burst: 3.0,
                per_second: 1.0,
            },
            offers_per_room: Rate {
                burst: 4.0,
                per_second: 1.0,
            },
            offers_total: Rate {
                burst: 5.0,
                per_second: 2.0,
            },
            ..WebLimits::default()
        }
    }

    #[test]
    fn connections_are_capped_per_client_and_in_all_and_freed_on_drop() {
        let c = Connections::new(limits());
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let a1 = c.admit(a).unwrap();
        let _a2 = c.admit(a).unwrap();
        assert!(c.admit(a).is_none(), "a third from one client");
        let _b1 = c.admit(b).unwrap();
        assert!(c.admit(b).is_none(), "over the total");
        drop(a1);
        let _b2 = c.admit(b).expect("a place freed");
        assert_eq!(c.open(), 3);
    }

    #[test]
    fn one_ipv6_slash_64_is_one_client() {
        let c = Connections::new(limits());
        let _first = c.admit("2001:db8:1:2::1".parse().unwrap()).unwrap();
        let _second = c.admit("2001:db8:1:2:ffff::9".parse().unwrap()).unwrap();
        assert!(c.admit("2001:db8:1:2::7".parse().unwrap()).is_none());
        assert!(c.admit("2001:db8:1:3::1".parse().unwrap()).is_some());
        assert_eq!(
            client_of("::ffff:192.0.2.7".parse().unwrap()),
            "192.0.2.7".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn offers_burst_then_refill_per_client_and_in_all() {
        let mut l = OfferLimiter::new(limits());
        let t0 = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(l.check(t0, a, None), Ok(()));
        }
        // The client's burst is spent: a token in a second.
        assert_eq!(l.check(t0, a, None), Err(Duration::from_secs(1)));
        // Another client is not held back by the first...
        assert_eq!(l.check(t0, b, None), Ok(()));
        assert_eq!(l.check(t0, b, None), Ok(()));
        // ...until everybody's burst is spent (5): then 2 per second for all.
        assert_eq!(l.check(t0, b, None), Err(Duration::from_millis(500)));
        let later = t0 + Duration::from_secs(1);
        assert_eq!(l.check(later, a, None), Ok(()));
        assert_eq!(l.check(later, a, None), Err(Duration::from_secs(1)));
    }

    #[test]
    fn offers_for_one_room_are_capped_whoever_sends_them() {
        let mut l = OfferLimiter::new(limits());
        let t0 = Instant::now();
        let ip = |i: u8| IpAddr::from([192, 0, 2, i]);
        for i in 0..4 {
            assert_eq!(l.check(t0, ip(i), Some(7)), Ok(()));
        }
        assert_eq!(l.check(t0, ip(9), Some(7)), Err(Duration::from_secs(1)));
        // Another room still takes one (everybody's burst of 5 has one left).
        assert_eq!(l.check(t0, ip(9), Some(8)), Ok(()));
    }

    #[test]
    fn many_clients_do_not_grow_the_table_without_bound() {
        let mut l = OfferLimiter::new(limits());
        let t0 = Instant::now();
        for i in 0..(3 * MAX_CLIENTS as u32) {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            let _ = l.check(t0 + Duration::from_secs(i as u64), ip, None);
        }
        assert!(l.clients.len() <= MAX_CLIENTS + 1, "{}", l.clients.len());
    }
}
