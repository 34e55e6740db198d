//! Hole punching, sans-IO: `(now, datagram) -> transmits / events / timeout`.
//!
//! Both peers ping every candidate of the other at once, paced (fast for the first second, then
//! slower). A ping is answered with a pong **to the exact address it came from**, which also
//! becomes a candidate (a peer-reflexive one: what the peer's NAT really maps to). The first
//! pong proves a direct path both ways. Once direct, pings every 1.5 s keep NAT mappings open;
//! if pongs stop, the path is reported lost and punching starts again, so a link that comes back
//! (or a path that opens later) is found again.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::wire::signal::PeerMsg;

#[derive(Debug, Clone)]
pub struct PunchConfig {
    pub fast_interval: Duration,
    pub fast_for: Duration,
    pub slow_interval: Duration,
    /// Give up (for now) after this long without a direct path.
    pub timeout: Duration,
    /// Try again this long after giving up: paths can open later.
    pub retry_after: Duration,
    pub keepalive: Duration,
    pub lost_after: Duration,
    /// With a port mapping of our own, wait this long for the peer's pings before pinging.
    pub mapped_grace: Duration,
}

impl Default for PunchConfig {
    fn default() -> Self {
        Self {
            fast_interval: Duration::from_millis(25),
            fast_for: Duration::from_secs(1),
            slow_interval: Duration::from_millis(250),
            timeout: Duration::from_secs(5),
            retry_after: Duration::from_secs(3),
            keepalive: Duration::from_secs(1),
            lost_after: Duration::from_secs(3),
            mapped_grace: Duration::from_millis(500),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PunchEvent {
    /// A direct path works both ways. `upnp`: it goes through a router port mapping (ours or
    /// the peer's).
    Direct {
        addr: SocketAddr,
        rtt: Duration,
        upnp: bool,
    },
    /// The peer reaches us through our router's port mapping.
    PeerUsesMapping,
    /// The peer proved itself from this address: its packets may be accepted from there.
    PeerSeen { addr: SocketAddr },
    /// The direct path stopped answering.
    Lost { addr: SocketAddr },
    /// No direct path within the timeout (punching resumes after `retry_after`).
    GaveUp,
}

#[derive(Debug)]
enum State {
    Punching {
        since: Instant,
    },
    Direct {
        addr: SocketAddr,
        last_pong: Instant,
    },
    Waiting {
        until: Instant,
    },
}

pub struct Puncher {
    session: u64,
    secret: u64,
    /// Our own port-mapped address on the router, if any.
    mapped: Option<SocketAddr>,
    peer_uses_mapping: bool,
    /// The current direct path goes to the peer's port mapping.
    direct_via_mapping: bool,
    cfg: PunchConfig,
    candidates: Vec<SocketAddr>,
    state: State,
    next_send: Instant,
    txn: u64,
    sent: HashMap<u64, (Instant, SocketAddr)>,
    out: VecDeque<(SocketAddr, PeerMsg)>,
    events: VecDeque<PunchEvent>,
}

impl Puncher {
    pub fn new(
        now: Instant,
        session: u64,
        secret: u64,
        candidates: Vec<SocketAddr>,
        cfg: PunchConfig,
    ) -> Self {
        Self::with_mapping(now, session, secret, candidates, None, cfg)
    }

    /// Like [`Puncher::new`], knowing our own router port mapping.
    pub fn with_mapping(
        now: Instant,
        session: u64,
        secret: u64,
        candidates: Vec<SocketAddr>,
        mapped: Option<SocketAddr>,
        cfg: PunchConfig,
    ) -> Self {
        let mut p = Self {
            session,
            secret,
            mapped,
            peer_uses_mapping: false,
            direct_via_mapping: false,
            cfg,
            candidates: Vec::new(),
            state: State::Punching { since: now },
            next_send: now,
            txn: now.elapsed().as_nanos() as u64 ^ secret.rotate_left(17),
            sent: HashMap::new(),
            out: VecDeque::new(),
            events: VecDeque::new(),
        };
        p.add_candidates(now, &candidates);
        if p.mapped.is_some() {
            // We have a router port mapping: let the peer come to it first. Our own early
            // pings would create NAT state (conntrack) that can clash with the mapping's.
            p.next_send = now + p.cfg.mapped_grace;
        }
        p.handle_timeout(now);
        p
    }

    pub fn add_candidates(&mut self, now: Instant, addrs: &[SocketAddr]) {
        for a in addrs {
            if !self.candidates.contains(a) {
                self.candidates.push(*a);
                // Already direct: a new address of the peer (it roamed) gets a ping now, which
                // also opens our NAT to it.
                if let State::Direct { .. } = self.state {
                    self.ping(now, *a);
                }
            }
        }
    }

    /// Our router port mapping arrived.
    pub fn set_mapped(&mut self, mapped: SocketAddr) {
        self.mapped = Some(mapped);
    }

    pub fn direct(&self) -> Option<SocketAddr> {
        match self.state {
            State::Direct { addr, .. } => Some(addr),
            _ => None,
        }
    }

    fn ping(&mut self, now: Instant, to: SocketAddr) {
        self.txn = self.txn.wrapping_add(1);
        self.sent.insert(self.txn, (now, to));
        self.out.push_back((
            to,
            PeerMsg::Ping {
                session: self.session,
                secret: self.secret,
                txn: self.txn,
                to,
            },
        ));
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        // Forget pings nobody will answer any more.
        let horizon = self.cfg.lost_after;
        self.sent
            .retain(|_, (t, _)| now.saturating_duration_since(*t) < horizon);
        match self.state {
            State::Punching { since } => {
                if now >= since + self.cfg.timeout {
                    self.state = State::Waiting {
                        until: now + self.cfg.retry_after,
                    };
                    self.events.push_back(PunchEvent::GaveUp);
                    return;
                }
                if now >= self.next_send {
                    for a in self.candidates.clone() {
                        self.ping(now, a);
                    }
                    let fast = now < since + self.cfg.fast_for;
                    self.next_send = now
                        + if fast {
                            self.cfg.fast_interval
                        } else {
                            self.cfg.slow_interval
                        };
                }
            }
            State::Direct { addr, last_pong } => {
                if now >= last_pong + self.cfg.lost_after {
                    self.events.push_back(PunchEvent::Lost { addr });
                    self.state = State::Punching { since: now };
                    self.next_send = now;
                    self.handle_timeout(now);
                } else if now >= self.next_send {
                    self.ping(now, addr);
                    self.next_send = now + self.cfg.keepalive;
                }
            }
            State::Waiting { until } => {
                if now >= until {
                    self.state = State::Punching { since: now };
                    self.next_send = now;
                    self.handle_timeout(now);
                }
            }
        }
    }

    /// A punch datagram from `from`. Wrong session or secret: ignored.
    pub fn handle_msg(&mut self, now: Instant, from: SocketAddr, msg: PeerMsg) {
        match msg {
            PeerMsg::Ping {
                session,
                secret,
                txn,
                to,
            } if session == self.session && secret == self.secret => {
                let via_mapping = self.mapped == Some(to);
                self.out.push_back((
                    from,
                    PeerMsg::Pong {
                        session,
                        secret,
                        txn,
                        via_mapping,
                    },
                ));
                if via_mapping && !self.peer_uses_mapping {
                    self.peer_uses_mapping = true;
                    self.events.push_back(PunchEvent::PeerUsesMapping);
                }
                self.events.push_back(PunchEvent::PeerSeen { addr: from });
                let roamed = matches!(self.state, State::Direct { addr, .. } if addr != from);
                if !self.candidates.contains(&from) {
                    // Peer-reflexive: where the peer's NAT really sends from. Ping it now.
                    self.candidates.push(from);
                    if matches!(self.state, State::Punching { .. }) || roamed {
                        self.ping(now, from);
                    }
                } else if roamed && !self.sent.values().any(|(_, to)| *to == from) {
                    // The peer talks from another address now (it roamed): check it both ways.
                    self.ping(now, from);
                }
            }
            PeerMsg::Pong {
                session,
                secret,
                txn,
                via_mapping,
            } if session == self.session && secret == self.secret => {
                let upnp = via_mapping || self.peer_uses_mapping;
                let Some((sent_at, to)) = self.sent.remove(&txn) else {
                    return;
                };
                if to != from {
                    return;
                }
                let rtt = now.saturating_duration_since(sent_at);
                let switch = match self.state {
                    State::Direct { addr, .. } if addr == from => false,
                    // A later round trip through another address: the peer moved there.
                    State::Direct { last_pong, .. } if sent_at >= last_pong => true,
                    // A router port mapping outlives NAT timeouts and rebinding: prefer it.
                    State::Direct { .. } => via_mapping && !self.direct_via_mapping,
                    _ => true,
                };
                if let State::Direct { addr, last_pong } = &mut self.state {
                    if *addr == from {
                        *last_pong = now;
                    }
                }
                if switch {
                    if !matches!(self.state, State::Direct { .. }) {
                        self.next_send = now + self.cfg.keepalive;
                    }
                    self.state = State::Direct {
                        addr: from,
                        last_pong: now,
                    };
                    self.direct_via_mapping = via_mapping;
                    self.events.push_back(PunchEvent::Direct {
                        addr: from,
                        rtt,
                        upnp,
                    });
                }
            }
            _ => {}
        }
    }

    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, PeerMsg)> {
        self.out.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<PunchEvent> {
        self.events.pop_front()
    }

    pub fn poll_timeout(&self) -> Instant {
        match self.state {
            State::Punching { since } => self.next_send.min(since + self.cfg.timeout),
            State::Direct { last_pong, .. } => self.next_send.min(last_pong + self.cfg.lost_after),
            State::Waiting { until } => until,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Timeline = Vec<(Instant, PunchEvent)>;

    const A: &str = "192.0.2.1:1000";
    const B: &str = "198.51.100.2:2000";

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// Two punchers and a virtual network: `blocked(from, to, now)` drops, `delay` delays.
    struct Net {
        now: Instant,
        a: Puncher,
        b: Puncher,
        /// (arrival, from, to, msg)
        flight: Vec<(Instant, SocketAddr, SocketAddr, PeerMsg)>,
        delay: Duration,
    }

    impl Net {
        fn new(a_cands: Vec<SocketAddr>, b_cands: Vec<SocketAddr>) -> Self {
            let now = Instant::now();
            Self {
                now,
                a: Puncher::new(now, 7, 99, b_cands, PunchConfig::default()),
                b: Puncher::new(now, 7, 99, a_cands, PunchConfig::default()),
                flight: Vec::new(),
                delay: Duration::from_millis(20),
            }
        }

        fn run(
            &mut self,
            d: Duration,
            mut pass: impl FnMut(SocketAddr, SocketAddr, Instant, u64) -> bool,
        ) -> (Timeline, Timeline) {
            let end = self.now + d;
            let (mut ea, mut eb) = (vec![], vec![]);
            let mut n = 0;
            while self.now < end {
                for (who, from) in [(0, A), (1, B)] {
                    let p = if who == 0 { &mut self.a } else { &mut self.b };
                    if p.poll_timeout() <= self.now {
                        p.handle_timeout(self.now);
                    }
                    while let Some((to, m)) = p.poll_transmit() {
                        n += 1;
                        if pass(addr(from), to, self.now, n) {
                            // Jitter: every third datagram takes longer (reordering).
                            let extra = if n % 3 == 0 {
                                self.delay
                            } else {
                                Duration::ZERO
                            };
                            self.flight
                                .push((self.now + self.delay + extra, addr(from), to, m));
                        }
                    }
                }
                let now = self.now;
                let (due, later): (Vec<_>, Vec<_>) =
                    self.flight.drain(..).partition(|f| f.0 <= now);
                self.flight = later;
                for (_, from, to, m) in due {
                    if to == addr(A) {
                        self.a.handle_msg(now, from, m);
                    } else if to == addr(B) {
                        self.b.handle_msg(now, from, m);
                    }
                }
                while let Some(e) = self.a.poll_event() {
                    ea.push((now, e));
                }
                while let Some(e) = self.b.poll_event() {
                    eb.push((now, e));
                }
                self.now += Duration::from_millis(5);
            }
            (ea, eb)
        }
    }

    fn direct(ev: &[(Instant, PunchEvent)]) -> Option<(Instant, SocketAddr)> {
        ev.iter().find_map(|(t, e)| match e {
            PunchEvent::Direct { addr, .. } => Some((*t, *addr)),
            _ => None,
        })
    }

    #[test]
    fn both_sides_find_the_direct_path_in_about_one_rtt() {
        let mut net = Net::new(vec![addr(A)], vec![addr(B)]);
        let t0 = net.now;
        let (ea, eb) = net.run(Duration::from_millis(500), |_, _, _, _| true);
        let (ta, pa) = direct(&ea).expect("a direct");
        let (tb, pb) = direct(&eb).expect("b direct");
        assert_eq!((pa, pb), (addr(B), addr(A)));
        // RTT is 40-60 ms here; both done within ~2 RTT.
        assert!(ta - t0 <= Duration::from_millis(120), "{:?}", ta - t0);
        assert!(tb - t0 <= Duration::from_millis(120), "{:?}", tb - t0);
    }

    #[test]
    fn a_wrong_candidate_is_corrected_by_the_peer_reflexive_address() {
        // B's announced address is stale (its NAT maps elsewhere): A learns the real one from
        // B's pings and answers there.
        let mut net = Net::new(vec![addr(A)], vec![addr("198.51.100.2:9999")]);
        let (ea, eb) = net.run(Duration::from_secs(1), |_, _, _, _| true);
        assert_eq!(direct(&ea).map(|d| d.1), Some(addr(B)));
        assert_eq!(direct(&eb).map(|d| d.1), Some(addr(A)));
    }

    #[test]
    fn lossy_start_still_punches() {
        let mut net = Net::new(vec![addr(A)], vec![addr(B)]);
        let t0 = net.now;
        // 70% loss in the first 300 ms.
        let (ea, eb) = net.run(Duration::from_secs(2), |_, _, t, n| {
            t > t0 + Duration::from_millis(300) || n % 10 >= 7
        });
        assert!(direct(&ea).is_some() && direct(&eb).is_some());
    }

    #[test]
    fn blocked_path_gives_up_then_finds_it_when_it_opens() {
        let mut net = Net::new(vec![addr(A)], vec![addr(B)]);
        let (ea, _) = net.run(Duration::from_secs(6), |_, _, _, _| false);
        assert!(ea.iter().any(|(_, e)| *e == PunchEvent::GaveUp));
        assert!(direct(&ea).is_none());
        // The path opens: after the retry delay punching resumes and succeeds.
        let (ea, eb) = net.run(Duration::from_secs(5), |_, _, _, _| true);
        assert!(direct(&ea).is_some() && direct(&eb).is_some(), "{ea:?}");
    }

    #[test]
    fn cut_link_is_lost_then_recovered() {
        let mut net = Net::new(vec![addr(A)], vec![addr(B)]);
        let (ea, _) = net.run(Duration::from_secs(1), |_, _, _, _| true);
        assert!(direct(&ea).is_some());
        // Keepalives keep it up for a while.
        let (ea, _) = net.run(Duration::from_secs(5), |_, _, _, _| true);
        assert!(
            ea.is_empty()
                || ea
                    .iter()
                    .all(|(_, e)| matches!(e, PunchEvent::PeerSeen { .. }))
        );
        // Cut for 6 s: lost.
        let (ea, _) = net.run(Duration::from_secs(6), |_, _, _, _| false);
        assert!(
            ea.iter().any(|(_, e)| matches!(e, PunchEvent::Lost { .. })),
            "{ea:?}"
        );
        // Back: found again within a second of punching.
        let (ea, _) = net.run(Duration::from_secs(4), |_, _, _, _| true);
        assert!(direct(&ea).is_some(), "{ea:?}");
    }

    #[test]
    fn a_roaming_peer_is_followed_at_once() {
        let mut net = Net::new(vec![addr(A)], vec![addr(B)]);
        let (ea, _) = net.run(Duration::from_secs(1), |_, _, _, _| true);
        assert_eq!(direct(&ea).map(|d| d.1), Some(addr(B)));
        // B's NAT gives it a new outside address: B's keepalives now come from there.
        let moved = addr("198.51.100.2:3000");
        let t0 = net.now;
        let mut ea = Vec::new();
        while net.now < t0 + Duration::from_secs(3) {
            net.b.handle_timeout(net.now);
            while let Some((to, m)) = net.b.poll_transmit() {
                if to == addr(A) {
                    net.a.handle_msg(net.now, moved, m);
                }
            }
            if net.a.poll_timeout() <= net.now {
                net.a.handle_timeout(net.now);
            }
            while let Some((to, m)) = net.a.poll_transmit() {
                if to == moved {
                    net.b.handle_msg(net.now, addr(A), m);
                }
            }
            while let Some(e) = net.a.poll_event() {
                ea.push((net.now, e));
            }
            net.now += Duration::from_millis(5);
        }
        let (t, to) = ea
            .iter()
            .find_map(|(t, e)| match e {
                PunchEvent::Direct { addr, .. } => Some((*t, *addr)),
                _ => None,
            })
            .expect("followed the peer");
        assert_eq!(to, moved);
        // Within one keepalive period, not after the path was declared lost.
        assert!(t - t0 <= Duration::from_millis(1600), "{:?}", t - t0);
        assert!(!ea.iter().any(|(_, e)| matches!(e, PunchEvent::Lost { .. })));
    }

    #[test]
    fn a_path_through_a_port_mapping_is_labelled_upnp_on_both_sides() {
        let now = Instant::now();
        let mapped = addr("192.0.2.1:5000");
        // A has a router mapping; B pings it there.
        let mut a = Puncher::with_mapping(now, 7, 99, vec![], Some(mapped), PunchConfig::default());
        let mut b = Puncher::new(now, 7, 99, vec![mapped], PunchConfig::default());
        let (to, ping) = b.poll_transmit().unwrap();
        assert_eq!(to, mapped);
        a.handle_msg(now, addr(B), ping);
        assert!(std::iter::from_fn(|| a.poll_event()).any(|e| e == PunchEvent::PeerUsesMapping));
        let pong = std::iter::from_fn(|| a.poll_transmit())
            .find(|(_, m)| matches!(m, PeerMsg::Pong { .. }))
            .unwrap()
            .1;
        b.handle_msg(now, mapped, pong);
        assert!(matches!(
            b.poll_event(),
            Some(PunchEvent::Direct { upnp: true, .. })
        ));
    }

    #[test]
    fn a_side_with_a_port_mapping_waits_for_the_peer_first() {
        let now = Instant::now();
        let mapped = addr("192.0.2.1:5000");
        let mut a = Puncher::with_mapping(
            now,
            7,
            99,
            vec![addr(B)],
            Some(mapped),
            PunchConfig::default(),
        );
        assert_eq!(a.poll_transmit(), None, "no ping during the grace period");
        // The peer's ping through the mapping is answered at once.
        a.handle_msg(
            now,
            addr(B),
            PeerMsg::Ping {
                session: 7,
                secret: 99,
                txn: 1,
                to: mapped,
            },
        );
        assert!(matches!(
            a.poll_transmit(),
            Some((
                _,
                PeerMsg::Pong {
                    via_mapping: true,
                    ..
                }
            ))
        ));
        // After the grace period it punches itself too.
        let later = now + Duration::from_millis(500);
        a.handle_timeout(later);
        assert!(std::iter::from_fn(|| a.poll_transmit())
            .any(|(to, m)| to == addr(B) && matches!(m, PeerMsg::Ping { .. })));
    }

    #[test]
    fn strangers_cannot_fake_a_path() {
        let now = Instant::now();
        let mut p = Puncher::new(now, 7, 99, vec![addr(B)], PunchConfig::default());
        while p.poll_transmit().is_some() {}
        // Wrong secret: no answer, no path.
        p.handle_msg(
            now,
            addr("203.0.113.9:1"),
            PeerMsg::Ping {
                session: 7,
                secret: 98,
                txn: 1,
                to: addr(A),
            },
        );
        assert_eq!(p.poll_transmit(), None);
        assert_eq!(p.poll_event(), None);
        // A pong for a txn we never sent (or from another address) is ignored.
        p.handle_msg(
            now,
            addr("203.0.113.9:1"),
            PeerMsg::Pong {
                session: 7,
                secret: 99,
                txn: 12345,
                via_mapping: false,
            },
        );
        assert_eq!(p.direct(), None);
    }
}
