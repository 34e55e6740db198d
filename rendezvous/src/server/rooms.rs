//! Rooms, sans-IO: `(now, from, message)` in, datagrams and events out. No sockets, no clock.
//!
//! Drive it like str0m: feed [`Rooms::handle`] / [`Rooms::handle_timeout`], then drain
//! [`Rooms::poll_transmit`] and [`Rooms::poll_event`], and sleep until [`Rooms::poll_timeout`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sha2::Sha256;

use crate::abuse::network_of;
use crate::code::RoomCode;
use crate::wire::signal::{
    Claim, ClientMsg, ErrorKind, Fingerprint, MemberId, RoomTicket, ServerMsg, ViewerInfo, WebSide,
    MAX_LISTED_VIEWERS, SENDER_ID,
};

/// How long a network that joined a missing code counts as guessing.
const MISS_MEMORY: Duration = Duration::from_secs(60);
/// Most networks remembered as guessing; beyond, new ones are not (the budget still holds).
const MAX_MISSED: usize = 100_000;

/// Key of the MACs that make room tickets. A server keeps it across restarts (its state dir) so
/// senders re-open their codes; without one it draws a new key at start.
pub type TicketKey = [u8; 32];

#[derive(Debug, Clone)]
pub struct RoomsConfig {
    /// A member that sends nothing for this long is gone; a sender gone closes its room.
    pub idle: Duration,
    /// A room (and its code) never lives longer than this.
    pub max_age: Duration,
    pub max_rooms: usize,
    pub max_viewers: usize,
    /// Datagrams per second per source IP (token bucket), and the burst allowed.
    pub rate_per_ip: f64,
    pub burst_per_ip: f64,
    /// IPv4 addresses sharing this many leading bits are one network for the limits below
    /// (IPv6: one /64).
    pub ipv4_prefix: u8,
    /// Open and join attempts per second per network: makes guessing codes slow.
    pub joins_per_network: f64,
    pub join_burst_per_network: f64,
    /// Joins of codes that do not exist, from everybody. When spent, networks that missed in the
    /// last minute are refused until it refills; viewers from elsewhere still join.
    pub misses_per_sec: f64,
    pub miss_burst: f64,
    /// Rooms open at once from one network.
    pub rooms_per_network: usize,
    /// A room whose sender has not yet sent a keepalive with its token from its address (a
    /// forged Open, or a sender gone at once) lives this long.
    pub unproven_idle: Duration,
    /// Relay limits: bytes and packets per second per session, bytes per second per source IP.
    pub relay_bytes_per_session: f64,
    pub relay_packets_per_session: f64,
    pub relay_bytes_per_ip: f64,
    /// Most relay sessions (viewer memberships) one IP may hold.
    pub relay_sessions_per_ip: usize,
    /// Told to senders when they open a room, so they can print the browser link.
    pub web: Option<WebSide>,
    /// Signs room tickets; `None`: a random key for this run only.
    pub ticket_key: Option<TicketKey>,
}

impl Default for RoomsConfig {
    fn default() -> Self {
        Self {
            idle: Duration::from_secs(15),
            max_age: Duration::from_secs(12 * 3600),
            max_rooms: 10_000,
            max_viewers: 16,
            rate_per_ip: 50.0,
            burst_per_ip: 100.0,
            ipv4_prefix: 24,
            joins_per_network: 5.0,
            join_burst_per_network: 20.0,
            misses_per_sec: 50.0,
            miss_burst: 200.0,
            rooms_per_network: 16,
            unproven_idle: Duration::from_secs(5),
            relay_bytes_per_session: 50e6 / 8.0,
            relay_packets_per_session: 20_000.0,
            relay_bytes_per_ip: 100e6 / 8.0,
            relay_sessions_per_ip: 32,
            web: None,
            ticket_key: None,
        }
    }
}

/// One datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub to: SocketAddr,
    pub msg: ServerMsg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The sender said goodbye.
    Left,
    /// The sender stopped sending keepalives.
    SenderGone,
    /// The room reached its maximum age.
    Expired,
    /// Its sender came back (a new process with the room's ticket) and took the code over.
    Reclaimed,
    /// Its sender never proved it was at its address (see [`RoomsConfig::unproven_idle`]).
    Unproven,
    /// The server was full and this room, never watched, was from the network holding the
    /// most rooms.
    Evicted,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Opened {
        code: RoomCode,
        from: SocketAddr,
    },
    Joined {
        code: RoomCode,
        member: MemberId,
        from: SocketAddr,
    },
    ViewerLeft {
        code: RoomCode,
        member: MemberId,
    },
    Closed {
        code: RoomCode,
        reason: CloseReason,
    },
    /// A member proved it is at a new address (it roamed); its relay traffic goes there.
    Moved {
        code: RoomCode,
        member: MemberId,
        to: SocketAddr,
    },
    /// Requests from this address were refused; emitted once per burst.
    RateLimited {
        ip: IpAddr,
    },
    /// A sender's network holds `rooms_per_network` rooms already.
    TooManyRooms {
        network: IpAddr,
    },
    /// Joins of missing codes spent the server-wide budget; from now on networks that missed
    /// lately are refused until it refills. Emitted once per exhaustion.
    GuessingLimited,
    /// Relay data over a limit was dropped; emitted at most once a second per session.
    RelayLimited {
        session: u64,
        limit: &'static str,
    },
    /// Relay data from an address that is not a member of the session was dropped.
    RelayRefused {
        session: u64,
        from: SocketAddr,
    },
}

/// The rooms' figures for the metrics.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RoomsSnapshot {
    pub rooms: u64,
    pub viewers: u64,
    pub relay_sessions: u64,
    pub relay: RelayStats,
    pub refused: BTreeMap<&'static str, u64>,
}

/// Counters of the relay.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RelayStats {
    pub packets: u64,
    pub bytes: u64,
    pub refused: u64,
    pub limited: u64,
}

#[derive(Debug)]
struct Member {
    addr: SocketAddr,
    hosts: Vec<SocketAddr>,
    token: u64,
    last_seen: Instant,
    /// Viewers only: the relay session to the sender, and the punch secret shared with it.
    relay: u64,
    secret: u64,
    /// A new address the member's keepalive came from, and the nonce it must echo from there.
    moving_to: Option<(SocketAddr, u64)>,
}

#[derive(Debug)]
struct RelaySession {
    code: RoomCode,
    viewer: MemberId,
    bytes: Bucket,
    packets: Bucket,
    last_report: Option<Instant>,
}

impl Member {
    /// Host candidates first, then the reflexive address if it is new.
    fn candidates(&self) -> Vec<SocketAddr> {
        let mut c = self.hosts.clone();
        if !c.contains(&self.addr) {
            c.push(self.addr);
        }
        c
    }
}

#[derive(Debug)]
struct Room {
    created: Instant,
    sender: Member,
    /// The sender's network when it opened the room (what counts against its limit).
    network: IpAddr,
    /// The sender has sent a keepalive with its token from its address.
    proven: bool,
    /// A viewer has joined: somebody knew the code, so it is never evicted.
    watched: bool,
    fingerprint: Fingerprint,
    /// The sender refuses the relay.
    direct_only: bool,
    viewers: BTreeMap<MemberId, Member>,
    next_viewer: MemberId,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
    limited: bool,
}

impl Bucket {
    fn full(burst: f64, now: Instant) -> Self {
        Self {
            tokens: burst,
            at: now,
            limited: false,
        }
    }

    fn take(&mut self, now: Instant, rate: f64, burst: f64) -> bool {
        self.take_n(now, 1.0, rate, burst)
    }

    fn take_n(&mut self, now: Instant, n: f64, rate: f64, burst: f64) -> bool {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * rate).min(burst);
        self.at = now;
        if self.tokens >= n {
            self.tokens -= n;
            self.limited = false;
            true
        } else {
            false
        }
    }
}

pub struct Rooms {
    cfg: RoomsConfig,
    rooms: HashMap<RoomCode, Room>,
    /// (source, txn) of recent requests, so a retried request gets the same answer.
    opens: HashMap<(SocketAddr, u64), RoomCode>,
    joins: HashMap<(SocketAddr, u64), (RoomCode, MemberId)>,
    /// Per source IP, all datagrams.
    buckets: HashMap<IpAddr, Bucket>,
    /// Per network, opens and joins.
    attempts: HashMap<IpAddr, Bucket>,
    /// Rooms open per network.
    networks: HashMap<IpAddr, usize>,
    /// Server-wide budget of joins that missed, and when each network last missed.
    misses: Option<Bucket>,
    missed: HashMap<IpAddr, Instant>,
    guessing_limited: bool,
    relays: HashMap<u64, RelaySession>,
    relay_ip: HashMap<IpAddr, Bucket>,
    relay_stats: RelayStats,
    /// Requests answered with an error, by its name.
    refused: BTreeMap<&'static str, u64>,
    rng: StdRng,
    ticket_key: TicketKey,
    out: VecDeque<Transmit>,
    events: VecDeque<Event>,
}

impl Rooms {
    /// `seed` makes codes and tokens reproducible in tests; servers pass a random seed.
    /// The server's web side started (after the UDP socket was bound).
    pub fn set_web(&mut self, web: WebSide) {
        self.cfg.web = Some(web);
    }

    pub fn new(cfg: RoomsConfig, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let ticket_key = cfg.ticket_key.unwrap_or_else(|| rng.gen());
        Self {
            ticket_key,
            cfg,
            rooms: HashMap::new(),
            opens: HashMap::new(),
            joins: HashMap::new(),
            buckets: HashMap::new(),
            attempts: HashMap::new(),
            networks: HashMap::new(),
            misses: None,
            missed: HashMap::new(),
            guessing_limited: false,
            relays: HashMap::new(),
            relay_ip: HashMap::new(),
            relay_stats: RelayStats::default(),
            refused: BTreeMap::new(),
            rng,
            out: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    pub fn viewer_count(&self, code: RoomCode) -> Option<usize> {
        self.rooms.get(&code).map(|r| r.viewers.len())
    }

    pub fn relay_stats(&self) -> RelayStats {
        self.relay_stats
    }

    /// Decides where relay data for `session` from `from` goes: the other member's address, or
    /// `None` (not a member, or over a limit). The caller forwards the datagram itself, so the
    /// hot path copies nothing.
    pub fn route_relay(
        &mut self,
        now: Instant,
        from: SocketAddr,
        session: u64,
        len: usize,
    ) -> Option<SocketAddr> {
        let Some(rs) = self.relays.get_mut(&session) else {
            self.relay_stats.refused += 1;
            return None;
        };
        let room = self.rooms.get(&rs.code)?;
        let viewer = room.viewers.get(&rs.viewer)?;
        let report = rs
            .last_report
            .is_none_or(|t| now >= t + Duration::from_secs(1));
        let to = if from == room.sender.addr {
            viewer.addr
        } else if from == viewer.addr {
            room.sender.addr
        } else {
            self.relay_stats.refused += 1;
            if report {
                rs.last_report = Some(now);
                self.events.push_back(Event::RelayRefused { session, from });
            }
            return None;
        };
        let cfg = &self.cfg;
        let ip = self
            .relay_ip
            .entry(from.ip())
            .or_insert_with(|| Bucket::full(cfg.relay_bytes_per_ip, now));
        let (pps, bps) = (cfg.relay_packets_per_session, cfg.relay_bytes_per_session);
        let limit = if !rs.packets.take_n(now, 1.0, pps, pps) {
            Some("packets per second per session")
        } else if !rs.bytes.take_n(now, len as f64, bps, bps) {
            Some("bandwidth per session")
        } else if !ip.take_n(
            now,
            len as f64,
            cfg.relay_bytes_per_ip,
            cfg.relay_bytes_per_ip,
        ) {
            Some("bandwidth per IP")
        } else {
            None
        };
        if let Some(limit) = limit {
            self.relay_stats.limited += 1;
            if report {
                rs.last_report = Some(now);
                self.events
                    .push_back(Event::RelayLimited { session, limit });
            }
            return None;
        }
        self.relay_stats.packets += 1;
        self.relay_stats.bytes += len as u64;
        Some(to)
    }

    pub fn handle(&mut self, now: Instant, from: SocketAddr, msg: ClientMsg) {
        if let ClientMsg::Relay { session, payload } = msg {
            if let Some(to) = self.route_relay(now, from, session, payload.len()) {
                self.send(to, ServerMsg::Relay { session, payload });
            }
            return;
        }
        let is_join = matches!(msg, ClientMsg::Open { .. } | ClientMsg::Join { .. });
        if !self.admit(now, from.ip(), is_join) {
            let txn = match msg {
                ClientMsg::Open { txn, .. } | ClientMsg::Join { txn, .. } => txn,
                _ => 0,
            };
            self.send(
                from,
                ServerMsg::Error {
                    txn,
                    kind: ErrorKind::RateLimited,
                },
            );
            return;
        }
        match msg {
            ClientMsg::Open {
                txn,
                hosts,
                fingerprint,
                claim,
                direct_only,
            } => self.open(now, from, txn, hosts, (fingerprint, direct_only), claim),
            ClientMsg::Join { txn, code, hosts } => self.join(now, from, txn, code, hosts),
            ClientMsg::Keepalive {
                code,
                member,
                token,
                hosts,
            } => self.keepalive(now, from, code, member, token, hosts),
            ClientMsg::Prove {
                code,
                member,
                token,
                nonce,
            } => self.prove(now, from, (code, member, token), nonce),
            ClientMsg::Leave {
                code,
                member,
                token,
            } => self.leave(from, code, member, token),
            ClientMsg::Relay { .. } => {}
        }
    }

    fn admit(&mut self, now: Instant, ip: IpAddr, is_join: bool) -> bool {
        let cfg = &self.cfg;
        let all = self
            .buckets
            .entry(ip)
            .or_insert_with(|| Bucket::full(cfg.burst_per_ip, now));
        let refused = if !all.take(now, cfg.rate_per_ip, cfg.burst_per_ip) {
            Some(all)
        } else if is_join {
            let attempts = self
                .attempts
                .entry(network_of(ip, cfg.ipv4_prefix))
                .or_insert_with(|| Bucket::full(cfg.join_burst_per_network, now));
            let ok = attempts.take(now, cfg.joins_per_network, cfg.join_burst_per_network);
            (!ok).then_some(attempts)
        } else {
            None
        };
        match refused {
            None => true,
            Some(bucket) => {
                // Once per burst.
                if !std::mem::replace(&mut bucket.limited, true) {
                    self.events.push_back(Event::RateLimited { ip });
                }
                false
            }
        }
    }

    /// A join for `code` from `net`: `Err` when it must be refused as guessing.
    fn guess_check(&mut self, now: Instant, net: IpAddr, code: RoomCode) -> Result<(), ErrorKind> {
        let cfg = &self.cfg;
        let misses = self
            .misses
            .get_or_insert_with(|| Bucket::full(cfg.miss_burst, now));
        misses.take_n(now, 0.0, cfg.misses_per_sec, cfg.miss_burst);
        let spent = misses.tokens < 1.0;
        if !spent {
            self.guessing_limited = false;
        }
        let missed_lately = self
            .missed
            .get(&net)
            .is_some_and(|t| now < *t + MISS_MEMORY);
        if spent && missed_lately {
            return Err(ErrorKind::RateLimited);
        }
        if self.rooms.contains_key(&code) {
            return Ok(());
        }
        misses.take(now, cfg.misses_per_sec, cfg.miss_burst);
        if misses.tokens < 1.0 && !std::mem::replace(&mut self.guessing_limited, true) {
            self.events.push_back(Event::GuessingLimited);
        }
        if self.missed.len() < MAX_MISSED || self.missed.contains_key(&net) {
            self.missed.insert(net, now);
        }
        Err(ErrorKind::RoomNotFound)
    }

    fn open(
        &mut self,
        now: Instant,
        from: SocketAddr,
        txn: u64,
        hosts: Vec<SocketAddr>,
        (fingerprint, direct_only): (Fingerprint, bool),
        claim: Option<Claim>,
    ) {
        let code = match self.opens.get(&(from, txn)) {
            Some(code) if self.rooms.contains_key(code) => *code,
            _ => {
                if let Some(c) = claim {
                    if !self.ticket_valid(&c) {
                        let kind = ErrorKind::BadTicket;
                        self.send(from, ServerMsg::Error { txn, kind });
                        return;
                    }
                    // The same sender again (a new process, or this server restarted): the
                    // old room's viewers were connected to the old sender and join again.
                    self.close(c.code, CloseReason::Reclaimed);
                }
                let network = network_of(from.ip(), self.cfg.ipv4_prefix);
                if self.networks.get(&network).copied().unwrap_or(0) >= self.cfg.rooms_per_network {
                    self.events.push_back(Event::TooManyRooms { network });
                    let kind = ErrorKind::TooManyRooms;
                    self.send(from, ServerMsg::Error { txn, kind });
                    return;
                }
                if self.rooms.len() >= self.cfg.max_rooms && !self.evict_for(network) {
                    let kind = ErrorKind::ServerFull;
                    self.send(from, ServerMsg::Error { txn, kind });
                    return;
                }
                let code = match claim {
                    Some(c) => c.code,
                    None => loop {
                        let c = RoomCode::random(&mut self.rng);
                        if !self.rooms.contains_key(&c) {
                            break c;
                        }
                    },
                };
                let token = self.rng.gen();
                self.rooms.insert(
                    code,
                    Room {
                        created: now,
                        sender: Member {
                            addr: from,
                            hosts,
                            token,
                            last_seen: now,
                            relay: 0,
                            secret: 0,
                            moving_to: None,
                        },
                        network,
                        proven: false,
                        watched: false,
                        fingerprint,
                        direct_only,
                        viewers: BTreeMap::new(),
                        next_viewer: 1,
                    },
                );
                *self.networks.entry(network).or_default() += 1;
                self.opens.insert((from, txn), code);
                self.events.push_back(Event::Opened { code, from });
                code
            }
        };
        let room = &self.rooms[&code];
        let msg = ServerMsg::Opened {
            txn,
            code,
            token: room.sender.token,
            reflexive: from,
            idle_secs: self.cfg.idle.as_secs().min(u16::MAX as u64) as u16,
            web: self.cfg.web,
            ticket: self.ticket(code),
        };
        self.send(from, msg);
    }

    /// Makes space for a sender from `network` on a full server: closes the newest room nobody
    /// has watched from the network holding the most rooms, if that holds more than `network`.
    /// One attacker then cannot keep others out; a room with viewers is never closed.
    fn evict_for(&mut self, network: IpAddr) -> bool {
        let held = |n: &IpAddr| self.networks.get(n).copied().unwrap_or(0);
        let victim = self
            .rooms
            .iter()
            .filter(|(_, r)| !r.watched)
            .max_by_key(|(_, r)| (held(&r.network), r.created))
            .filter(|(_, r)| held(&r.network) > held(&network) + 1)
            .map(|(code, _)| *code);
        match victim {
            Some(code) => {
                self.close(code, CloseReason::Evicted);
                true
            }
            None => false,
        }
    }

    fn ticket_mac(&self, code: RoomCode) -> Hmac<Sha256> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.ticket_key).expect("HMAC takes any key length");
        mac.update(b"inclubit room ticket");
        mac.update(&code.bits().to_be_bytes());
        mac
    }

    /// The ticket of `code` under this server's key.
    pub fn ticket(&self, code: RoomCode) -> RoomTicket {
        let full = self.ticket_mac(code).finalize().into_bytes();
        let mut t = RoomTicket::default();
        let n = t.len();
        t.copy_from_slice(&full[..n]);
        t
    }

    /// Constant-time check of a claim's ticket.
    fn ticket_valid(&self, claim: &Claim) -> bool {
        self.ticket_mac(claim.code)
            .verify_truncated_left(&claim.ticket)
            .is_ok()
    }

    fn join(
        &mut self,
        now: Instant,
        from: SocketAddr,
        txn: u64,
        code: RoomCode,
        hosts: Vec<SocketAddr>,
    ) {
        if let Err(kind) = self.guess_check(now, network_of(from.ip(), self.cfg.ipv4_prefix), code)
        {
            self.send(from, ServerMsg::Error { txn, kind });
            return;
        }
        let ip = from.ip();
        let held = self
            .rooms
            .values()
            .flat_map(|r| r.viewers.values())
            .filter(|m| m.addr.ip() == ip)
            .count();
        let Some(room) = self.rooms.get_mut(&code) else {
            self.send(
                from,
                ServerMsg::Error {
                    txn,
                    kind: ErrorKind::RoomNotFound,
                },
            );
            return;
        };
        let member = match self.joins.get(&(from, txn)) {
            Some((c, id)) if *c == code && room.viewers.contains_key(id) => *id,
            _ => {
                if room.viewers.len() >= self.cfg.max_viewers {
                    self.out.push_back(Transmit {
                        to: from,
                        msg: ServerMsg::Error {
                            txn,
                            kind: ErrorKind::RoomFull,
                        },
                    });
                    return;
                }
                if held >= self.cfg.relay_sessions_per_ip {
                    self.events.push_back(Event::RateLimited { ip });
                    self.out.push_back(Transmit {
                        to: from,
                        msg: ServerMsg::Error {
                            txn,
                            kind: ErrorKind::RateLimited,
                        },
                    });
                    return;
                }
                let relay = loop {
                    let r: u64 = self.rng.gen();
                    if r != 0 && !self.relays.contains_key(&r) {
                        break r;
                    }
                };
                let id = room.next_viewer;
                room.next_viewer += 1;
                room.watched = true;
                room.viewers.insert(
                    id,
                    Member {
                        addr: from,
                        hosts,
                        token: self.rng.gen(),
                        last_seen: now,
                        relay,
                        secret: self.rng.gen(),
                        moving_to: None,
                    },
                );
                self.relays.insert(
                    relay,
                    RelaySession {
                        code,
                        viewer: id,
                        bytes: Bucket::full(self.cfg.relay_bytes_per_session, now),
                        packets: Bucket::full(self.cfg.relay_packets_per_session, now),
                        last_report: None,
                    },
                );
                self.joins.insert((from, txn), (code, id));
                self.events.push_back(Event::Joined {
                    code,
                    member: id,
                    from,
                });
                // Tell the sender at once; its keepalives repeat the list in case this is lost.
                let to = room.sender.addr;
                let msg = viewers_msg(code, room);
                self.out.push_back(Transmit { to, msg });
                id
            }
        };
        let room = &self.rooms[&code];
        let msg = ServerMsg::Joined {
            txn,
            code,
            member,
            token: room.viewers[&member].token,
            reflexive: from,
            sender: room.sender.candidates(),
            fingerprint: room.fingerprint,
            relay: room.viewers[&member].relay,
            secret: room.viewers[&member].secret,
            sender_direct_only: room.direct_only,
        };
        self.send(from, msg);
    }

    fn keepalive(
        &mut self,
        now: Instant,
        from: SocketAddr,
        code: RoomCode,
        member: MemberId,
        token: u64,
        hosts: Vec<SocketAddr>,
    ) {
        let nonce = self.rng.gen();
        let Some(m) = self.member_mut(from, code, member, token) else {
            return;
        };
        if m.addr != from {
            // Roamed, or a forged source: nothing goes to `from` but this challenge (no bigger
            // than the keepalive) until it is echoed from there.
            m.moving_to = Some((from, nonce));
            self.send(from, ServerMsg::Challenge { code, nonce });
            return;
        }
        m.last_seen = now;
        let changed = m.hosts != hosts;
        m.hosts = hosts;
        if member == SENDER_ID {
            if let Some(room) = self.rooms.get_mut(&code) {
                room.proven = true;
            }
        }
        self.answer_member(from, code, member, changed);
    }

    /// The echo of a challenge: the member is at `from`, its relay traffic goes there now.
    fn prove(
        &mut self,
        now: Instant,
        from: SocketAddr,
        (code, member, token): (RoomCode, MemberId, u64),
        nonce: u64,
    ) {
        let Some(m) = self.member_mut(from, code, member, token) else {
            return;
        };
        if m.moving_to != Some((from, nonce)) {
            return;
        }
        m.moving_to = None;
        m.addr = from;
        m.last_seen = now;
        self.events.push_back(Event::Moved {
            code,
            member,
            to: from,
        });
        self.answer_member(from, code, member, true);
    }

    /// The member `member` of `code` if `token` is its own; else tells `from` it is not.
    fn member_mut(
        &mut self,
        from: SocketAddr,
        code: RoomCode,
        member: MemberId,
        token: u64,
    ) -> Option<&mut Member> {
        let Some(room) = self.rooms.get_mut(&code) else {
            let kind = ErrorKind::RoomNotFound;
            self.out.push_back(Transmit {
                to: from,
                msg: ServerMsg::Error { txn: 0, kind },
            });
            return None;
        };
        let m = if member == SENDER_ID {
            Some(&mut room.sender)
        } else {
            room.viewers.get_mut(&member)
        };
        match m {
            Some(m) if m.token == token => Some(m),
            _ => {
                let kind = ErrorKind::NotMember;
                self.out.push_back(Transmit {
                    to: from,
                    msg: ServerMsg::Error { txn: 0, kind },
                });
                None
            }
        }
    }

    /// Answers a member's keepalive; when its candidates `changed`, the other side hears at once.
    fn answer_member(&mut self, from: SocketAddr, code: RoomCode, member: MemberId, changed: bool) {
        let Some(room) = self.rooms.get(&code) else {
            return;
        };
        if changed && member == SENDER_ID {
            let sender = room.sender.candidates();
            for v in room.viewers.values() {
                self.out.push_back(Transmit {
                    to: v.addr,
                    msg: ServerMsg::Alive {
                        code,
                        sender: sender.clone(),
                    },
                });
            }
        } else if changed {
            let to = room.sender.addr;
            let msg = viewers_msg(code, room);
            self.out.push_back(Transmit { to, msg });
        }
        let msg = if member == SENDER_ID {
            viewers_msg(code, room)
        } else {
            ServerMsg::Alive {
                code,
                sender: room.sender.candidates(),
            }
        };
        self.send(from, msg);
    }

    fn leave(&mut self, from: SocketAddr, code: RoomCode, member: MemberId, token: u64) {
        let Some(room) = self.rooms.get_mut(&code) else {
            return;
        };
        if member == SENDER_ID {
            if room.sender.token == token {
                self.close(code, CloseReason::Left);
            }
        } else if room.viewers.get(&member).is_some_and(|m| m.token == token) {
            if let Some(m) = room.viewers.remove(&member) {
                self.relays.remove(&m.relay);
            }
            self.events.push_back(Event::ViewerLeft { code, member });
            let to = room.sender.addr;
            let msg = viewers_msg(code, room);
            self.out.push_back(Transmit { to, msg });
        } else {
            self.send(
                from,
                ServerMsg::Error {
                    txn: 0,
                    kind: ErrorKind::NotMember,
                },
            );
        }
    }

    fn close(&mut self, code: RoomCode, reason: CloseReason) {
        if let Some(room) = self.rooms.remove(&code) {
            for v in room.viewers.values() {
                self.relays.remove(&v.relay);
            }
            if let Some(n) = self.networks.get_mut(&room.network) {
                *n -= 1;
                if *n == 0 {
                    self.networks.remove(&room.network);
                }
            }
            self.opens.retain(|_, c| *c != code);
            self.joins.retain(|_, (c, _)| *c != code);
            self.events.push_back(Event::Closed { code, reason });
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        let mut closed = Vec::new();
        for (code, room) in &mut self.rooms {
            if now >= room.created + self.cfg.max_age {
                closed.push((*code, CloseReason::Expired));
            } else if !room.proven && now >= room.sender.last_seen + self.cfg.unproven_idle {
                closed.push((*code, CloseReason::Unproven));
            } else if now >= room.sender.last_seen + self.cfg.idle {
                closed.push((*code, CloseReason::SenderGone));
            } else {
                let idle = self.cfg.idle;
                let gone: Vec<_> = room
                    .viewers
                    .iter()
                    .filter(|(_, v)| now >= v.last_seen + idle)
                    .map(|(id, _)| *id)
                    .collect();
                for id in gone {
                    if let Some(m) = room.viewers.remove(&id) {
                        self.relays.remove(&m.relay);
                    }
                    self.events.push_back(Event::ViewerLeft {
                        code: *code,
                        member: id,
                    });
                }
            }
        }
        for (code, reason) in closed {
            self.close(code, reason);
        }
        // Forget rate-limit state of quiet addresses (their buckets are full again).
        let horizon = Duration::from_secs(10);
        let quiet = |b: &Bucket| now.saturating_duration_since(b.at) >= horizon;
        self.buckets.retain(|_, b| !quiet(b));
        self.attempts.retain(|_, b| !quiet(b));
        self.missed.retain(|_, t| now < *t + MISS_MEMORY);
        self.relay_ip
            .retain(|_, b| now.saturating_duration_since(b.at) < horizon);
    }

    /// The next instant [`Rooms::handle_timeout`] has work to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let rooms = self.rooms.values().flat_map(|r| {
            let idle = if r.proven {
                self.cfg.idle
            } else {
                self.cfg.unproven_idle
            };
            std::iter::once(r.created + self.cfg.max_age)
                .chain(std::iter::once(r.sender.last_seen + idle))
                .chain(r.viewers.values().map(|v| v.last_seen + self.cfg.idle))
        });
        let buckets = (self.buckets.values())
            .chain(self.attempts.values())
            .map(|b| b.at + Duration::from_secs(10));
        rooms.chain(buckets).min()
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        let t = self.out.pop_front()?;
        if let ServerMsg::Error { kind, .. } = t.msg {
            *self.refused.entry(kind.name()).or_default() += 1;
        }
        Some(t)
    }

    /// Tells every sender and viewer that the server is going away (SIGTERM).
    pub fn closing(&mut self) {
        let members: Vec<SocketAddr> = self
            .rooms
            .values()
            .flat_map(|r| std::iter::once(r.sender.addr).chain(r.viewers.values().map(|v| v.addr)))
            .collect();
        for to in members {
            self.send(
                to,
                ServerMsg::Error {
                    txn: 0,
                    kind: ErrorKind::ServerClosing,
                },
            );
        }
    }

    /// New limits from a reloaded config; rooms, members and relays stay.
    pub fn set_limits(&mut self, limits: &RoomsConfig) {
        self.cfg.idle = limits.idle;
        self.cfg.max_viewers = limits.max_viewers;
        self.cfg.ipv4_prefix = limits.ipv4_prefix;
        self.cfg.rooms_per_network = limits.rooms_per_network;
    }

    /// What the metrics show: counts now and counters since start.
    pub fn snapshot(&self) -> RoomsSnapshot {
        RoomsSnapshot {
            rooms: self.rooms.len() as u64,
            viewers: self.rooms.values().map(|r| r.viewers.len() as u64).sum(),
            relay_sessions: self.relays.len() as u64,
            relay: self.relay_stats,
            refused: self.refused.clone(),
        }
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn send(&mut self, to: SocketAddr, msg: ServerMsg) {
        self.out.push_back(Transmit { to, msg });
    }
}

fn viewers_msg(code: RoomCode, room: &Room) -> ServerMsg {
    ServerMsg::Viewers {
        code,
        viewers: room
            .viewers
            .iter()
            .take(MAX_LISTED_VIEWERS)
            .map(|(id, m)| ViewerInfo {
                id: *id,
                candidates: m.candidates(),
                relay: m.relay,
                secret: m.secret,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FP: Fingerprint = [7; 32];

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    struct Lab {
        rooms: Rooms,
        now: Instant,
    }

    impl Lab {
        fn new() -> Self {
            Self::with(RoomsConfig::default())
        }
        fn with(cfg: RoomsConfig) -> Self {
            Self {
                rooms: Rooms::new(cfg, 1),
                now: Instant::now(),
            }
        }
        fn advance(&mut self, d: Duration) {
            self.now += d;
            if self.rooms.poll_timeout().is_some_and(|t| t <= self.now) {
                self.rooms.handle_timeout(self.now);
            }
        }
        fn send(&mut self, from: &str, msg: ClientMsg) -> Vec<Transmit> {
            self.rooms.handle(self.now, addr(from), msg);
            std::iter::from_fn(|| self.rooms.poll_transmit()).collect()
        }
        fn events(&mut self) -> Vec<Event> {
            std::iter::from_fn(|| self.rooms.poll_event()).collect()
        }
        fn open(&mut self, from: &str) -> (RoomCode, u64) {
            let out = self.send(
                from,
                ClientMsg::Open {
                    txn: 1,
                    hosts: vec![addr("192.0.2.10:5000")],
                    fingerprint: FP,
                    claim: None,
                    direct_only: false,
                },
            );
            let (code, token) = match &out[..] {
                [Transmit {
                    msg: ServerMsg::Opened { code, token, .. },
                    ..
                }] => (*code, *token),
                other => panic!("unexpected {other:?}"),
            };
            // As the client does at once: its first keepalive proves the room.
            let keepalive = ClientMsg::Keepalive {
                code,
                member: SENDER_ID,
                token,
                hosts: vec![addr("192.0.2.10:5000")],
            };
            self.send(from, keepalive);
            (code, token)
        }
        /// An Open nobody follows up (a forged source, say): the code, unproven.
        fn open_only(&mut self, from: &str, txn: u64) -> Result<RoomCode, ErrorKind> {
            let out = self.send(
                from,
                ClientMsg::Open {
                    txn,
                    hosts: vec![],
                    fingerprint: FP,
                    claim: None,
                    direct_only: false,
                },
            );
            match &out[..] {
                [Transmit {
                    msg: ServerMsg::Opened { code, .. },
                    ..
                }] => Ok(*code),
                [Transmit {
                    msg: ServerMsg::Error { kind, .. },
                    ..
                }] => Err(*kind),
                other => panic!("unexpected {other:?}"),
            }
        }
        fn join(&mut self, from: &str, txn: u64, code: RoomCode) -> Vec<Transmit> {
            self.send(
                from,
                ClientMsg::Join {
                    txn,
                    code,
                    hosts: vec![],
                },
            )
        }
    }

    #[test]
    fn open_then_join_exchanges_candidates() {
        let mut lab = Lab::new();
        let (code, _) = lab.open("198.51.100.1:4000");
        let out = lab.join("198.51.100.2:4001", 9, code);
        assert_eq!(out.len(), 2, "{out:?}");
        // The sender hears about the viewer, with its reflexive address.
        assert_eq!(out[0].to, addr("198.51.100.1:4000"));
        assert_eq!(
            out[0].msg,
            ServerMsg::Viewers {
                code,
                viewers: vec![ViewerInfo {
                    id: 1,
                    candidates: vec![addr("198.51.100.2:4001")],
                    relay: match &out[1].msg {
                        ServerMsg::Joined { relay, .. } => *relay,
                        _ => 0,
                    },
                    secret: match &out[1].msg {
                        ServerMsg::Joined { secret, .. } => *secret,
                        _ => 0,
                    },
                }]
            }
        );
        // The viewer gets host + reflexive candidates of the sender and its fingerprint.
        match &out[1].msg {
            ServerMsg::Joined {
                txn,
                member,
                reflexive,
                sender,
                fingerprint,
                ..
            } => {
                assert_eq!(*txn, 9);
                assert_eq!(*member, 1);
                assert_eq!(*reflexive, addr("198.51.100.2:4001"));
                assert_eq!(
                    sender,
                    &vec![addr("192.0.2.10:5000"), addr("198.51.100.1:4000")]
                );
                assert_eq!(*fingerprint, FP);
            }
            m => panic!("{m:?}"),
        }
    }

    #[test]
    fn retried_requests_are_idempotent() {
        let mut lab = Lab::new();
        let (a, ta) = lab.open("198.51.100.1:4000");
        let (b, tb) = lab.open("198.51.100.1:4000");
        assert_eq!((a, ta), (b, tb));
        assert_eq!(lab.rooms.room_count(), 1);
        lab.join("198.51.100.2:1", 5, a);
        lab.join("198.51.100.2:1", 5, a);
        assert_eq!(lab.rooms.viewer_count(a), Some(1));
    }

    #[test]
    fn wrong_code_is_room_not_found() {
        let mut lab = Lab::new();
        let (code, _) = lab.open("198.51.100.1:4000");
        let wrong = RoomCode::from_bits(code.bits() ^ 1);
        let out = lab.join("198.51.100.2:1", 3, wrong);
        assert_eq!(
            out,
            vec![Transmit {
                to: addr("198.51.100.2:1"),
                msg: ServerMsg::Error {
                    txn: 3,
                    kind: ErrorKind::RoomNotFound
                }
            }]
        );
    }

    #[test]
    fn second_viewer_gets_its_own_id_and_sender_sees_both() {
        let mut lab = Lab::new();
        let (code, token) = lab.open("198.51.100.1:4000");
        lab.join("198.51.100.2:1", 1, code);
        lab.join("198.51.100.3:1", 1, code);
        let out = lab.send(
            "198.51.100.1:4000",
            ClientMsg::Keepalive {
                code,
                member: SENDER_ID,
                token,
                hosts: vec![],
            },
        );
        match &out.last().unwrap().msg {
            ServerMsg::Viewers { viewers, .. } => {
                assert_eq!(viewers.iter().map(|v| v.id).collect::<Vec<_>>(), [1, 2])
            }
            m => panic!("{m:?}"),
        }
    }

    #[test]
    fn sender_gone_closes_room_after_idle() {
        let mut lab = Lab::new();
        let (code, token) = lab.open("198.51.100.1:4000");
        lab.events();
        // Keepalives keep it open well past the idle time.
        for _ in 0..10 {
            lab.advance(Duration::from_secs(5));
            lab.send(
                "198.51.100.1:4000",
                ClientMsg::Keepalive {
                    code,
                    member: 0,
                    token,
                    hosts: vec![],
                },
            );
        }
        assert_eq!(lab.rooms.room_count(), 1);
        lab.advance(Duration::from_secs(16));
        assert_eq!(lab.rooms.room_count(), 0);
        assert_eq!(
            lab.events(),
            vec![Event::Closed {
                code,
                reason: CloseReason::SenderGone
            }]
        );
        // A late viewer is told plainly.
        let out = lab.join("198.51.100.2:1", 1, code);
        assert!(matches!(
            out[0].msg,
            ServerMsg::Error {
                kind: ErrorKind::RoomNotFound,
                ..
            }
        ));
    }

    #[test]
    fn rooms_expire_at_max_age_even_with_keepalives() {
        let mut lab = Lab::with(RoomsConfig {
            max_age: Duration::from_secs(60),
            ..Default::default()
        });
        let (code, token) = lab.open("198.51.100.1:4000");
        for _ in 0..13 {
            lab.advance(Duration::from_secs(5));
            lab.send(
                "198.51.100.1:4000",
                ClientMsg::Keepalive {
                    code,
                    member: 0,
                    token,
                    hosts: vec![],
                },
            );
        }
        assert_eq!(lab.rooms.room_count(), 0);
        assert!(lab.events().contains(&Event::Closed {
            code,
            reason: CloseReason::Expired
        }));
    }

    #[test]
    fn viewer_leave_and_idle_viewer_are_removed() {
        let mut lab = Lab::new();
        let (code, stoken) = lab.open("198.51.100.1:4000");
        let out = lab.join("198.51.100.2:1", 1, code);
        let ServerMsg::Joined { token, member, .. } = out[1].msg.clone() else {
            panic!()
        };
        lab.join("198.51.100.3:1", 1, code);
        // A forged leave (wrong token) is refused.
        let out = lab.send(
            "198.51.100.9:1",
            ClientMsg::Leave {
                code,
                member,
                token: token ^ 1,
            },
        );
        assert!(matches!(
            out[0].msg,
            ServerMsg::Error {
                kind: ErrorKind::NotMember,
                ..
            }
        ));
        lab.send(
            "198.51.100.2:1",
            ClientMsg::Leave {
                code,
                member,
                token,
            },
        );
        assert_eq!(lab.rooms.viewer_count(code), Some(1));
        // Viewer 2 goes quiet while the sender keeps the room.
        for _ in 0..4 {
            lab.advance(Duration::from_secs(5));
            lab.send(
                "198.51.100.1:4000",
                ClientMsg::Keepalive {
                    code,
                    member: 0,
                    token: stoken,
                    hosts: vec![],
                },
            );
        }
        assert_eq!(lab.rooms.viewer_count(code), Some(0));
    }

    #[test]
    fn sender_leave_closes_room() {
        let mut lab = Lab::new();
        let (code, token) = lab.open("198.51.100.1:4000");
        lab.send(
            "198.51.100.1:4000",
            ClientMsg::Leave {
                code,
                member: 0,
                token,
            },
        );
        assert_eq!(lab.rooms.room_count(), 0);
    }

    #[test]
    fn roaming_member_keeps_membership_with_new_address() {
        let mut lab = Lab::new();
        let (code, token) = lab.open("198.51.100.1:4000");
        let keepalive = ClientMsg::Keepalive {
            code,
            member: 0,
            token,
            hosts: vec![],
        };
        let out = lab.send("198.51.100.7:999", keepalive.clone());
        let ServerMsg::Challenge { nonce, .. } = out[0].msg else {
            panic!("{out:?}")
        };
        let out = lab.join("198.51.100.2:1", 1, code);
        assert_eq!(
            out[0].to,
            addr("198.51.100.1:4000"),
            "not moved before the echo"
        );
        let prove = ClientMsg::Prove {
            code,
            member: 0,
            token,
            nonce,
        };
        lab.send("198.51.100.7:999", prove.clone());
        let out = lab.join("198.51.100.3:1", 1, code);
        assert_eq!(out[0].to, addr("198.51.100.7:999"));
        assert!(lab
            .events()
            .iter()
            .any(|e| matches!(e, Event::Moved { .. })));
        // An echo replayed later moves nothing; keepalives from there are answered.
        assert!(lab.send("198.51.100.7:999", prove).is_empty());
        let out = lab.send("198.51.100.7:999", keepalive);
        assert!(out.iter().any(
            |t| t.to == addr("198.51.100.7:999") && matches!(t.msg, ServerMsg::Viewers { .. })
        ));
    }

    #[test]
    fn room_full() {
        let mut lab = Lab::with(RoomsConfig {
            max_viewers: 2,
            ..Default::default()
        });
        let (code, _) = lab.open("198.51.100.1:4000");
        lab.join("198.51.100.2:1", 1, code);
        lab.join("198.51.100.3:1", 1, code);
        let out = lab.join("198.51.100.4:1", 1, code);
        assert!(matches!(
            out[0].msg,
            ServerMsg::Error {
                kind: ErrorKind::RoomFull,
                ..
            }
        ));
    }

    fn error_of(out: &[Transmit]) -> Option<ErrorKind> {
        out.iter().find_map(|t| match t.msg {
            ServerMsg::Error { kind, .. } => Some(kind),
            _ => None,
        })
    }

    #[test]
    fn one_network_gets_a_few_rooms_with_a_clear_error() {
        let mut lab = Lab::new();
        // 40 addresses of one /24 (as from 253 loopback addresses): 16 rooms.
        let got: Vec<_> = (1..=40)
            .map(|i| lab.open_only(&format!("203.0.113.{i}:4000"), 1))
            .collect();
        assert_eq!(got.iter().filter(|r| r.is_ok()).count(), 16);
        assert_eq!(got[16], Err(ErrorKind::TooManyRooms));
        // Past the network's burst of attempts, it is rate limited anyway.
        assert_eq!(got[39], Err(ErrorKind::RateLimited));
        let limited = lab
            .events()
            .iter()
            .filter(|e| matches!(e, Event::TooManyRooms { .. }))
            .count();
        assert_eq!(limited, 4);
        // Another network is not affected; one IPv6 /64 is one network.
        assert!(lab.open_only("203.0.114.1:4000", 1).is_ok());
        let v6: Vec<_> = (1..=17)
            .map(|i| lab.open_only(&format!("[2001:db8:5:6::{i:x}]:4000"), 1))
            .collect();
        assert_eq!(v6[16], Err(ErrorKind::TooManyRooms));
        assert!(lab.open_only("[2001:db8:5:7::1]:4000", 1).is_ok());
        // The network's rooms closing frees its places.
        lab.advance(Duration::from_secs(6));
        assert!(lab.open_only("203.0.113.99:4000", 2).is_ok());
    }

    #[test]
    fn rooms_nobody_proves_expire_fast_proven_ones_do_not() {
        let mut lab = Lab::new();
        let forged = lab.open_only("192.0.2.66:4000", 1).unwrap();
        let (real, _) = lab.open("198.51.100.1:4000");
        lab.advance(Duration::from_secs(5));
        assert!(lab.events().contains(&Event::Closed {
            code: forged,
            reason: CloseReason::Unproven
        }));
        assert_eq!(lab.rooms.room_count(), 1);
        assert!(lab.rooms.viewer_count(real).is_some());
    }

    #[test]
    fn a_full_server_makes_room_from_the_biggest_holder_never_from_a_watched_room() {
        let mut lab = Lab::with(RoomsConfig {
            max_rooms: 10,
            rooms_per_network: 8,
            ..Default::default()
        });
        // A watched room, one from another network, then an attacker's /24 fills the server.
        let (watched, _) = lab.open("198.51.100.1:4000");
        lab.join("198.51.100.2:4001", 1, watched);
        let (quiet, _) = lab.open("192.0.2.1:4000");
        for i in 1..=8 {
            lab.open_only(&format!("203.0.113.{i}:4000"), 1).unwrap();
        }
        assert_eq!(lab.rooms.room_count(), 10);
        // A sender from elsewhere still gets a room: the attacker's newest goes.
        lab.events();
        assert!(lab.open_only("198.18.0.1:4000", 1).is_ok());
        let closed: Vec<_> = lab
            .events()
            .into_iter()
            .filter_map(|e| match e {
                Event::Closed { code, reason } => Some((code, reason)),
                _ => None,
            })
            .collect();
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].1, CloseReason::Evicted);
        assert!(closed[0].0 != watched && closed[0].0 != quiet);
        // The attacker itself gets nothing more: it holds the most.
        assert_eq!(
            lab.open_only("203.0.113.50:4000", 1),
            Err(ErrorKind::ServerFull)
        );
        // A server full of watched rooms closes none of them.
        let mut lab = Lab::with(RoomsConfig {
            max_rooms: 3,
            ..Default::default()
        });
        for i in 1..=3 {
            let (code, _) = lab.open(&format!("203.0.113.{i}:4000"));
            lab.join(&format!("198.51.100.{i}:4001"), 1, code);
        }
        assert_eq!(
            lab.open_only("198.18.0.1:4000", 1),
            Err(ErrorKind::ServerFull)
        );
    }

    #[test]
    fn guessing_spends_a_budget_then_only_guessing_networks_are_refused() {
        let mut lab = Lab::with(RoomsConfig {
            misses_per_sec: 1.0,
            miss_burst: 5.0,
            ..Default::default()
        });
        let (code, _) = lab.open("198.51.100.1:4000");
        let wrong = RoomCode::from_bits(code.bits() ^ 1);
        // Each guess from its own /24: five misses spend the budget.
        for i in 0..5 {
            let out = lab.join(&format!("203.0.{i}.1:1"), 1, wrong);
            assert_eq!(error_of(&out), Some(ErrorKind::RoomNotFound));
        }
        assert!(lab.events().contains(&Event::GuessingLimited));
        // A network that guessed lately is refused now, even the right code.
        let out = lab.join("203.0.0.7:1", 2, code);
        assert_eq!(error_of(&out), Some(ErrorKind::RateLimited));
        // A viewer from a network that never guessed joins.
        let out = lab.join("198.51.100.20:1", 1, code);
        assert!(matches!(out[1].msg, ServerMsg::Joined { .. }), "{out:?}");
        // A minute later the guessers are forgotten and the budget is back.
        lab.advance(Duration::from_secs(61));
        let (code, _) = lab.open("198.51.100.1:4000");
        let out = lab.join("203.0.0.7:1", 3, code);
        assert!(matches!(out[1].msg, ServerMsg::Joined { .. }), "{out:?}");
    }

    #[test]
    fn guessing_codes_is_rate_limited() {
        let mut lab = Lab::new();
        lab.open("198.51.100.1:4000");
        let mut limited = 0;
        for i in 0..100 {
            let out = lab.join("203.0.113.5:1", i, RoomCode::from_bits(i as u32));
            if matches!(
                out[0].msg,
                ServerMsg::Error {
                    kind: ErrorKind::RateLimited,
                    ..
                }
            ) {
                limited += 1;
            }
        }
        assert!(limited >= 75, "only {limited} limited");
        assert_eq!(
            lab.events()
                .iter()
                .filter(|e| matches!(e, Event::RateLimited { .. }))
                .count(),
            1
        );
        // Other addresses are unaffected, and the bucket refills with time.
        let (code, _) = lab.open("198.51.100.8:1");
        assert!(matches!(
            lab.join("198.51.100.9:1", 1, code)[1].msg,
            ServerMsg::Joined { .. }
        ));
        lab.advance(Duration::from_secs(2));
        assert!(matches!(
            lab.join("203.0.113.5:1", 1000, code)[1].msg,
            ServerMsg::Joined { .. }
        ));
    }

    fn joined_relay(out: &[Transmit]) -> u64 {
        out.iter()
            .find_map(|t| match t.msg {
                ServerMsg::Joined { relay, .. } => Some(relay),
                _ => None,
            })
            .expect("joined")
    }

    fn relay(lab: &mut Lab, from: &str, session: u64, n: usize) -> Vec<Transmit> {
        lab.send(
            from,
            ClientMsg::Relay {
                session,
                payload: vec![0x40; n],
            },
        )
    }

    #[test]
    fn relay_forwards_only_between_the_two_members() {
        let mut lab = Lab::new();
        let (code, _) = lab.open("198.51.100.1:4000");
        let session = joined_relay(&lab.join("198.51.100.2:4001", 1, code));
        let out = relay(&mut lab, "198.51.100.2:4001", session, 1200);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].to, addr("198.51.100.1:4000"));
        assert!(
            matches!(&out[0].msg, ServerMsg::Relay { session: s, payload } if *s == session && payload.len() == 1200)
        );
        let out = relay(&mut lab, "198.51.100.1:4000", session, 100);
        assert_eq!(out[0].to, addr("198.51.100.2:4001"));
        // A third party that learned the session id can neither inject nor receive.
        assert!(relay(&mut lab, "203.0.113.66:4001", session, 100).is_empty());
        assert!(lab
            .events()
            .iter()
            .any(|e| matches!(e, Event::RelayRefused { .. })));
        // Unknown sessions go nowhere.
        assert!(relay(&mut lab, "198.51.100.2:4001", session ^ 1, 100).is_empty());
        assert_eq!(lab.rooms.relay_stats().refused, 2);
        assert_eq!(lab.rooms.relay_stats().packets, 2);
    }

    #[test]
    fn relay_follows_a_roaming_member_and_ends_with_the_membership() {
        let mut lab = Lab::new();
        let (code, stoken) = lab.open("198.51.100.1:4000");
        let out = lab.join("198.51.100.2:4001", 1, code);
        let session = joined_relay(&out);
        let ServerMsg::Joined { member, token, .. } = out[1].msg.clone() else {
            panic!()
        };
        // The viewer roams: an authenticated keepalive from its new address, then the echo of
        // the challenge sent there, move its relay address.
        let out = lab.send(
            "198.51.100.9:5555",
            ClientMsg::Keepalive {
                code,
                member,
                token,
                hosts: vec![],
            },
        );
        let [Transmit {
            to,
            msg: ServerMsg::Challenge { nonce, .. },
        }] = out[..]
        else {
            panic!("{out:?}")
        };
        assert_eq!(to, addr("198.51.100.9:5555"));
        let out = lab.send(
            "198.51.100.9:5555",
            ClientMsg::Prove {
                code,
                member,
                token,
                nonce,
            },
        );
        assert!(out.iter().any(|t| t.to == addr("198.51.100.1:4000")
            && matches!(&t.msg, ServerMsg::Viewers { viewers, .. }
                if viewers[0].candidates.contains(&addr("198.51.100.9:5555")))));
        let out = relay(&mut lab, "198.51.100.1:4000", session, 100);
        assert_eq!(out[0].to, addr("198.51.100.9:5555"));
        lab.send(
            "198.51.100.9:5555",
            ClientMsg::Leave {
                code,
                member,
                token,
            },
        );
        assert!(relay(&mut lab, "198.51.100.1:4000", session, 100).is_empty());
        let _ = stoken;
    }

    #[test]
    fn a_forged_source_cannot_move_the_relay() {
        let mut lab = Lab::new();
        let (code, _) = lab.open("198.51.100.1:4000");
        let out = lab.join("198.51.100.2:4001", 1, code);
        let session = joined_relay(&out);
        let ServerMsg::Joined { member, token, .. } = out[1].msg.clone() else {
            panic!()
        };
        // The member itself names a third party as its source: the only datagram that goes
        // there is a challenge no larger than the keepalive.
        let victim = "127.0.0.5:9999";
        let keepalive = ClientMsg::Keepalive {
            code,
            member,
            token,
            hosts: vec![],
        };
        let size = keepalive.encode().len();
        let out = lab.send(victim, keepalive);
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(matches!(out[0].msg, ServerMsg::Challenge { .. }));
        assert!(out[0].msg.encode().len() <= size);
        // It cannot see the nonce: guesses move nothing, from there or from its own address.
        for (from, nonce) in [(victim, 1), (victim, 0), ("198.51.100.2:4001", 1)] {
            let prove = ClientMsg::Prove {
                code,
                member,
                token,
                nonce,
            };
            assert!(lab.send(from, prove).is_empty());
        }
        let out = relay(&mut lab, "198.51.100.1:4000", session, 100);
        assert_eq!(out[0].to, addr("198.51.100.2:4001"));
        // Relay data from the unproven address is refused; the real one still flows.
        assert!(relay(&mut lab, victim, session, 100).is_empty());
        let out = relay(&mut lab, "198.51.100.2:4001", session, 100);
        assert_eq!(out[0].to, addr("198.51.100.1:4000"));
        // Nothing moved.
        assert!(!lab
            .events()
            .iter()
            .any(|e| matches!(e, Event::Moved { .. })));
    }

    #[test]
    fn relay_limits_bite_and_are_reported_once() {
        let mut lab = Lab::with(RoomsConfig {
            relay_bytes_per_session: 12_000.0,
            ..Default::default()
        });
        let (code, _) = lab.open("198.51.100.1:4000");
        let session = joined_relay(&lab.join("198.51.100.2:4001", 1, code));
        lab.events();
        let sent: usize = (0..50)
            .map(|_| relay(&mut lab, "198.51.100.2:4001", session, 1200).len())
            .sum();
        assert_eq!(
            sent, 10,
            "a 12 kB/s session passes 10 packets of 1200 B in a burst"
        );
        let limited: Vec<_> = lab
            .events()
            .into_iter()
            .filter(|e| {
                matches!(
                    e,
                    Event::RelayLimited {
                        limit: "bandwidth per session",
                        ..
                    }
                )
            })
            .collect();
        assert_eq!(limited.len(), 1);
        assert_eq!(lab.rooms.relay_stats().limited, 40);
        // A second later the bucket has refilled.
        lab.advance(Duration::from_secs(1));
        assert_eq!(relay(&mut lab, "198.51.100.2:4001", session, 1200).len(), 1);
    }

    #[test]
    fn relay_sessions_per_ip_are_capped() {
        let mut lab = Lab::with(RoomsConfig {
            relay_sessions_per_ip: 2,
            ..Default::default()
        });
        let (code, _) = lab.open("198.51.100.1:4000");
        lab.join("203.0.113.7:1", 1, code);
        lab.join("203.0.113.7:2", 2, code);
        let out = lab.join("203.0.113.7:3", 3, code);
        assert!(matches!(
            out[0].msg,
            ServerMsg::Error {
                kind: ErrorKind::RateLimited,
                ..
            }
        ));
    }

    #[test]
    fn new_candidates_are_pushed_to_the_other_side_at_once() {
        let mut lab = Lab::new();
        let (code, token) = lab.open("198.51.100.1:4000");
        let out = lab.join("198.51.100.2:4001", 1, code);
        let ServerMsg::Joined {
            member, token: vt, ..
        } = out[1].msg.clone()
        else {
            panic!()
        };
        let mapped = addr("198.51.100.1:6000");
        let out = lab.send(
            "198.51.100.1:4000",
            ClientMsg::Keepalive {
                code,
                member: SENDER_ID,
                token,
                hosts: vec![mapped],
            },
        );
        // The viewer hears the sender's new candidate without waiting for its own keepalive.
        assert!(out.iter().any(|t| t.to == addr("198.51.100.2:4001")
            && matches!(&t.msg, ServerMsg::Alive { sender, .. } if sender.contains(&mapped))));
        let vmapped = addr("198.51.100.2:7000");
        let out = lab.send(
            "198.51.100.2:4001",
            ClientMsg::Keepalive {
                code,
                member,
                token: vt,
                hosts: vec![vmapped],
            },
        );
        assert!(out.iter().any(|t| t.to == addr("198.51.100.1:4000")
            && matches!(&t.msg, ServerMsg::Viewers { viewers, .. } if viewers[0].candidates.contains(&vmapped))));
    }
}
