//! The peer's side of signalling, sans-IO: retransmits requests, keeps the membership alive and
//! turns server datagrams into [`ClientEvent`]s. The driver (in the `inclubit` crate) owns the
//! socket, which is the same socket that carries QUIC.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::code::RoomCode;
use crate::wire::signal::{
    Claim, ClientMsg, ErrorKind, Fingerprint, MemberId, RoomTicket, ServerMsg, ViewerInfo, WebSide,
    SENDER_ID,
};

#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Give up on the first answer after this long: the rendezvous is unreachable.
    pub request_timeout: Duration,
    /// First retransmission delay; it doubles up to one second.
    pub first_retry: Duration,
    /// Keepalive period; also keeps NAT mappings open (≤ 2 s survives the strictest home routers).
    pub keepalive: Duration,
    /// No answer to keepalives for this long: report [`ClientEvent::Lost`].
    pub lost_after: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(3),
            first_retry: Duration::from_millis(200),
            keepalive: Duration::from_secs(2),
            lost_after: Duration::from_secs(7),
        }
    }
}

#[derive(Debug, Clone)]
pub enum Role {
    Sender {
        hosts: Vec<SocketAddr>,
        fingerprint: Fingerprint,
        /// Re-open this code (a restarted sender keeping its link).
        claim: Option<Claim>,
        /// Refuses the relay (`--force-direct`): told to viewers.
        direct_only: bool,
    },
    Viewer {
        code: RoomCode,
        hosts: Vec<SocketAddr>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// The room is open. Comes again after a rendezvous restart, when the sender re-opened
    /// its code with the ticket (or, if the server no longer knows the ticket, a new code).
    Opened {
        code: RoomCode,
        reflexive: SocketAddr,
        /// The server serves browser viewers here (same host, this port).
        web: Option<WebSide>,
        /// Proof of ownership of `code`, to re-open it later.
        ticket: RoomTicket,
    },
    Joined {
        code: RoomCode,
        member: MemberId,
        reflexive: SocketAddr,
        sender: Vec<SocketAddr>,
        fingerprint: Fingerprint,
        /// The relay session to the sender.
        relay: u64,
        /// Authenticates punch datagrams with the sender.
        secret: u64,
        /// The sender refuses the relay (`--force-direct`).
        sender_direct_only: bool,
    },
    /// The sender's current viewers.
    Viewers(Vec<ViewerInfo>),
    /// Viewer: the sender's current candidates (they may grow, e.g. by a port mapping).
    SenderCandidates(Vec<SocketAddr>),
    /// The request was refused; the client is finished.
    Refused(ErrorKind),
    /// No answer to the request before the deadline; the client is finished.
    Unreachable,
    /// Keepalives go unanswered (the server may have restarted); media may go on.
    Lost,
    /// Keepalives are answered again.
    Restored,
    /// The room is gone (sender left or expired), seen in a keepalive answer. A sender that
    /// holds the room's ticket re-opens it at once ([`ClientEvent::Opened`] follows).
    RoomGone,
    /// The server said it is shutting down. A sender with its room's ticket re-opens it as soon
    /// as a server answers again; media goes on meanwhile.
    ServerClosing,
}

#[derive(Debug)]
enum State {
    Requesting {
        /// `None`: retry until answered (re-opening a room the server forgot).
        deadline: Option<Instant>,
        retry: Duration,
    },
    Member {
        code: RoomCode,
        member: MemberId,
        token: u64,
        lost: bool,
    },
    Done,
}

pub struct SignalClient {
    server: SocketAddr,
    role: Role,
    txn: u64,
    cfg: ClientConfig,
    state: State,
    next_send: Instant,
    last_heard: Instant,
    out: VecDeque<Vec<u8>>,
    events: VecDeque<ClientEvent>,
    hosts_changed: bool,
}

impl SignalClient {
    /// `txn` must be unpredictable per request (the driver passes a random number).
    pub fn new(now: Instant, server: SocketAddr, role: Role, txn: u64, cfg: ClientConfig) -> Self {
        let mut c = Self {
            server,
            role,
            txn,
            state: State::Requesting {
                deadline: Some(now + cfg.request_timeout),
                retry: cfg.first_retry,
            },
            cfg,
            next_send: now,
            last_heard: now,
            out: VecDeque::new(),
            events: VecDeque::new(),
            hosts_changed: false,
        };
        c.handle_timeout(now);
        c
    }

    pub fn server(&self) -> SocketAddr {
        self.server
    }

    fn hosts(&self) -> &[SocketAddr] {
        match &self.role {
            Role::Sender { hosts, .. } | Role::Viewer { hosts, .. } => hosts,
        }
    }

    /// New host candidates (e.g. a router port mapping arrived): announced at once with a
    /// keepalive (or with the request, if it is still being retried).
    pub fn set_hosts(&mut self, now: Instant, new: Vec<SocketAddr>) {
        match &mut self.role {
            Role::Sender { hosts, .. } | Role::Viewer { hosts, .. } => *hosts = new,
        }
        if let State::Member { .. } = self.state {
            self.next_send = now;
            self.handle_timeout(now);
        } else {
            // Still asking: the answer may already be on its way without these hosts.
            self.hosts_changed = true;
        }
    }

    fn request(&self) -> ClientMsg {
        match &self.role {
            Role::Sender {
                hosts,
                fingerprint,
                claim,
                direct_only,
            } => ClientMsg::Open {
                txn: self.txn,
                hosts: hosts.clone(),
                fingerprint: *fingerprint,
                claim: *claim,
                direct_only: *direct_only,
            },
            Role::Viewer { code, hosts } => ClientMsg::Join {
                txn: self.txn,
                code: *code,
                hosts: hosts.clone(),
            },
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if now < self.next_send {
            return;
        }
        match &mut self.state {
            State::Requesting { deadline, retry } => {
                if deadline.is_some_and(|d| now >= d) {
                    self.state = State::Done;
                    self.events.push_back(ClientEvent::Unreachable);
                    return;
                }
                self.next_send = now + *retry;
                *retry = (*retry * 2).min(Duration::from_secs(1));
                let bytes = self.request().encode();
                self.out.push_back(bytes);
            }
            State::Member {
                code,
                member,
                token,
                lost,
            } => {
                if !*lost && now >= self.last_heard + self.cfg.lost_after {
                    *lost = true;
                    self.events.push_back(ClientEvent::Lost);
                }
                self.next_send = now + self.cfg.keepalive;
                self.out.push_back(
                    ClientMsg::Keepalive {
                        code: *code,
                        member: *member,
                        token: *token,
                        hosts: self.hosts().to_vec(),
                    }
                    .encode(),
                );
            }
            State::Done => {}
        }
    }

    /// A datagram that arrived on the socket from `from`. Anything not from the server, or
    /// malformed, is ignored.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        if from != self.server {
            return;
        }
        let Ok(msg) = ServerMsg::decode(bytes) else {
            return;
        };
        self.handle_msg(now, msg);
    }

    fn handle_msg(&mut self, now: Instant, msg: ServerMsg) {
        match (&mut self.state, msg) {
            (
                State::Requesting { .. },
                ServerMsg::Opened {
                    txn,
                    code,
                    token,
                    reflexive,
                    web,
                    ticket,
                    ..
                },
            ) if txn == self.txn => {
                if let Role::Sender { claim, .. } = &mut self.role {
                    *claim = Some(Claim { code, ticket });
                }
                self.become_member(now, code, SENDER_ID, token);
                self.events.push_back(ClientEvent::Opened {
                    code,
                    reflexive,
                    web,
                    ticket,
                });
            }
            // A claim the server does not recognise (it restarted with a new key): a new room.
            (
                State::Requesting { .. },
                ServerMsg::Error {
                    txn,
                    kind: ErrorKind::BadTicket,
                },
            ) if txn == self.txn && matches!(self.role, Role::Sender { claim: Some(_), .. }) => {
                if let Role::Sender { claim, .. } = &mut self.role {
                    *claim = None;
                }
                self.request_again(now);
            }
            (
                State::Requesting { .. },
                ServerMsg::Joined {
                    txn,
                    code,
                    member,
                    token,
                    reflexive,
                    sender,
                    fingerprint,
                    relay,
                    secret,
                    sender_direct_only,
                },
            ) if txn == self.txn => {
                self.become_member(now, code, member, token);
                self.events.push_back(ClientEvent::Joined {
                    relay,
                    secret,
                    sender_direct_only,
                    code,
                    member,
                    reflexive,
                    sender,
                    fingerprint,
                });
            }
            // Rate limiting is transient: the retransmissions carry on until the deadline.
            (State::Requesting { .. }, ServerMsg::Error { txn, kind })
                if txn == self.txn && kind != ErrorKind::RateLimited =>
            {
                self.state = State::Done;
                self.events.push_back(ClientEvent::Refused(kind));
            }
            (
                State::Member {
                    code,
                    lost,
                    member,
                    token,
                },
                msg,
            ) => {
                let ours = match &msg {
                    ServerMsg::Viewers { code: c, .. }
                    | ServerMsg::Alive { code: c, .. }
                    | ServerMsg::Challenge { code: c, .. } => c == code,
                    ServerMsg::Error { txn: 0, .. } => true,
                    _ => false,
                };
                if !ours {
                    return;
                }
                self.last_heard = now;
                if *lost {
                    *lost = false;
                    self.events.push_back(ClientEvent::Restored);
                }
                match msg {
                    ServerMsg::Viewers { viewers, .. } => {
                        self.events.push_back(ClientEvent::Viewers(viewers))
                    }
                    ServerMsg::Alive { sender, .. } => {
                        self.events.push_back(ClientEvent::SenderCandidates(sender))
                    }
                    // Our address changed (a new NAT mapping): prove we are here.
                    ServerMsg::Challenge { nonce, .. } => {
                        let prove = ClientMsg::Prove {
                            code: *code,
                            member: *member,
                            token: *token,
                            nonce,
                        };
                        self.out.push_back(prove.encode());
                    }
                    ServerMsg::Error {
                        kind: ErrorKind::ServerClosing,
                        ..
                    } => {
                        self.events.push_back(ClientEvent::ServerClosing);
                        if matches!(self.role, Role::Sender { claim: Some(_), .. }) {
                            self.request_again(now);
                        }
                    }
                    ServerMsg::Error {
                        kind: ErrorKind::RoomNotFound | ErrorKind::NotMember,
                        ..
                    } => {
                        self.events.push_back(ClientEvent::RoomGone);
                        if matches!(self.role, Role::Sender { claim: Some(_), .. }) {
                            self.request_again(now);
                        } else {
                            self.state = State::Done;
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }

    /// Asks again with a new transaction, retrying until answered: the server is there (it
    /// just answered), and a sender must not give up its room.
    fn request_again(&mut self, now: Instant) {
        // A new txn (the old one is tied to the old answer); splitmix64 keeps it unpredictable.
        let mut z = self.txn.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        self.txn = z ^ (z >> 31);
        self.state = State::Requesting {
            deadline: None,
            retry: self.cfg.first_retry,
        };
        self.next_send = now;
        self.handle_timeout(now);
    }

    fn become_member(&mut self, now: Instant, code: RoomCode, member: MemberId, token: u64) {
        self.state = State::Member {
            code,
            member,
            token,
            lost: false,
        };
        self.last_heard = now;
        // Hosts that changed while asking go out with a keepalive right away, and so does a
        // sender's first: it proves the room is ours (unproven rooms expire fast).
        let hosts_changed = std::mem::take(&mut self.hosts_changed);
        self.next_send = if hosts_changed || member == SENDER_ID {
            now
        } else {
            now + self.cfg.keepalive
        };
    }

    /// Says goodbye (best effort, one datagram) and stops.
    pub fn leave(&mut self) {
        if let State::Member {
            code,
            member,
            token,
            ..
        } = self.state
        {
            self.out.push_back(
                ClientMsg::Leave {
                    code,
                    member,
                    token,
                }
                .encode(),
            );
        }
        self.state = State::Done;
    }

    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// Datagrams to send to [`SignalClient::server`].
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.out.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Done => None,
            _ => Some(self.next_send),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::rooms::{Rooms, RoomsConfig};

    const SERVER: &str = "192.0.2.1:7000";

    /// A client and the real room logic wired together by a virtual network that can drop.
    struct Net {
        now: Instant,
        rooms: Rooms,
    }

    impl Net {
        fn new() -> Self {
            Self {
                now: Instant::now(),
                rooms: Rooms::new(RoomsConfig::default(), 3),
            }
        }

        /// Runs until `until`, delivering datagrams unless `drop(n)` says so for the n-th one.
        fn run(
            &mut self,
            clients: &mut [(&mut SignalClient, SocketAddr)],
            until: Duration,
            mut drop: impl FnMut(usize) -> bool,
        ) -> Vec<Vec<ClientEvent>> {
            let end = self.now + until;
            let mut n = 0;
            let mut events = vec![Vec::new(); clients.len()];
            while self.now < end {
                for (i, (c, addr)) in clients.iter_mut().enumerate() {
                    c.handle_timeout(self.now);
                    while let Some(d) = c.poll_transmit() {
                        n += 1;
                        if drop(n) {
                            continue;
                        }
                        let msg = ClientMsg::decode(&d).unwrap();
                        self.rooms.handle(self.now, *addr, msg);
                    }
                    while let Some(e) = c.poll_event() {
                        events[i].push(e);
                    }
                }
                while let Some(t) = self.rooms.poll_transmit() {
                    n += 1;
                    if drop(n) {
                        continue;
                    }
                    let server = SERVER.parse().unwrap();
                    for (c, addr) in clients.iter_mut() {
                        if *addr == t.to {
                            c.handle_datagram(self.now, server, &t.msg.encode());
                        }
                    }
                }
                for (i, (c, _)) in clients.iter_mut().enumerate() {
                    while let Some(e) = c.poll_event() {
                        events[i].push(e);
                    }
                }
                self.now += Duration::from_millis(10);
            }
            events
        }
    }

    fn sender(now: Instant) -> SignalClient {
        SignalClient::new(
            now,
            SERVER.parse().unwrap(),
            Role::Sender {
                hosts: vec![],
                fingerprint: [1; 32],
                claim: None,
                direct_only: false,
            },
            77,
            ClientConfig::default(),
        )
    }

    #[test]
    fn open_and_join_survive_heavy_loss() {
        let mut net = Net::new();
        let mut s = sender(net.now);
        let sa: SocketAddr = "198.51.100.1:1".parse().unwrap();
        // Drop the first three datagrams of every kind: retransmission gets through.
        let ev = net.run(&mut [(&mut s, sa)], Duration::from_secs(2), |n| n <= 3);
        let Some(ClientEvent::Opened {
            code, reflexive, ..
        }) = ev[0].first().cloned()
        else {
            panic!("{ev:?}")
        };
        assert_eq!(reflexive, sa);
        let mut v = SignalClient::new(
            net.now,
            SERVER.parse().unwrap(),
            Role::Viewer {
                code,
                hosts: vec![],
            },
            78,
            ClientConfig::default(),
        );
        let va: SocketAddr = "198.51.100.2:2".parse().unwrap();
        let ev = net.run(
            &mut [(&mut s, sa), (&mut v, va)],
            Duration::from_secs(7),
            |n| n % 3 == 0,
        );
        assert!(
            matches!(&ev[1][0], ClientEvent::Joined { fingerprint, sender, .. } if *fingerprint == [1; 32] && sender == &vec![sa]),
            "{ev:?}"
        );
        assert!(
            ev[0]
                .iter()
                .any(|e| matches!(e, ClientEvent::Viewers(v) if v.len() == 1)),
            "{ev:?}"
        );
    }

    #[test]
    fn a_server_that_says_it_is_closing_gets_the_room_back_when_it_returns() {
        let mut net = Net::new();
        let mut s = sender(net.now);
        let sa: SocketAddr = "198.51.100.1:1".parse().unwrap();
        let ev = net.run(&mut [(&mut s, sa)], Duration::from_millis(100), |_| false);
        let Some(ClientEvent::Opened { code, .. }) = ev[0].first().cloned() else {
            panic!("{ev:?}")
        };
        // SIGTERM: the server tells its members, then it is gone for a while.
        net.rooms.closing();
        let ev = net.run(&mut [(&mut s, sa)], Duration::from_millis(50), |_| false);
        assert_eq!(ev[0].first(), Some(&ClientEvent::ServerClosing), "{ev:?}");
        // A restarted server with the same ticket key: the same code, at once.
        net.rooms = Rooms::new(RoomsConfig::default(), 3);
        let ev = net.run(&mut [(&mut s, sa)], Duration::from_secs(3), |_| false);
        assert!(
            ev[0]
                .iter()
                .any(|e| matches!(e, ClientEvent::Opened { code: c, .. } if *c == code)),
            "{ev:?}"
        );
    }

    #[test]
    fn unreachable_server_reported_after_deadline() {
        let mut net = Net::new();
        let mut s = sender(net.now);
        let sa: SocketAddr = "198.51.100.1:1".parse().unwrap();
        let ev = net.run(&mut [(&mut s, sa)], Duration::from_secs(5), |_| true);
        assert_eq!(ev[0], vec![ClientEvent::Unreachable]);
        assert!(s.is_done());
    }

    #[test]
    fn wrong_code_is_refused() {
        let mut net = Net::new();
        let mut v = SignalClient::new(
            net.now,
            SERVER.parse().unwrap(),
            Role::Viewer {
                code: RoomCode::from_bits(42),
                hosts: vec![],
            },
            1,
            ClientConfig::default(),
        );
        let va: SocketAddr = "198.51.100.2:2".parse().unwrap();
        let ev = net.run(&mut [(&mut v, va)], Duration::from_secs(1), |_| false);
        assert_eq!(ev[0], vec![ClientEvent::Refused(ErrorKind::RoomNotFound)]);
    }

    #[test]
    fn keepalive_loss_reports_lost_then_restored() {
        let mut net = Net::new();
        let mut s = sender(net.now);
        let sa: SocketAddr = "198.51.100.1:1".parse().unwrap();
        net.run(&mut [(&mut s, sa)], Duration::from_secs(1), |_| false);
        let ev = net.run(&mut [(&mut s, sa)], Duration::from_secs(8), |_| true);
        assert_eq!(ev[0], vec![ClientEvent::Lost]);
        let ev = net.run(&mut [(&mut s, sa)], Duration::from_secs(3), |_| false);
        // The room idled out on the server meanwhile (15 s not reached: it is still there).
        assert_eq!(ev[0].first(), Some(&ClientEvent::Restored), "{ev:?}");
    }

    #[test]
    fn a_member_whose_address_changes_proves_it_and_is_followed() {
        let mut net = Net::new();
        let mut s = sender(net.now);
        let sa: SocketAddr = "198.51.100.1:1".parse().unwrap();
        let ev = net.run(&mut [(&mut s, sa)], Duration::from_millis(100), |_| false);
        let Some(ClientEvent::Opened { code, .. }) = ev[0].first().cloned() else {
            panic!("{ev:?}")
        };
        let role = Role::Viewer {
            code,
            hosts: vec![],
        };
        let mut v = SignalClient::new(
            net.now,
            SERVER.parse().unwrap(),
            role,
            5,
            ClientConfig::default(),
        );
        let va: SocketAddr = "198.51.100.2:2".parse().unwrap();
        net.run(
            &mut [(&mut s, sa), (&mut v, va)],
            Duration::from_millis(100),
            |_| false,
        );
        // The sender's NAT maps it anew: its next keepalive is challenged, it echoes, and the
        // viewer hears the new address with the following answer.
        let moved: SocketAddr = "198.51.100.1:7777".parse().unwrap();
        let ev = net.run(
            &mut [(&mut s, moved), (&mut v, va)],
            Duration::from_secs(3),
            |_| false,
        );
        assert!(
            ev[1]
                .iter()
                .any(|e| matches!(e, ClientEvent::SenderCandidates(c) if c.contains(&moved))),
            "{ev:?}"
        );
        assert!(!ev[0].contains(&ClientEvent::Lost), "{ev:?}");
    }

    #[test]
    fn hosts_changed_while_opening_go_out_as_soon_as_the_room_is_open() {
        let mut net = Net::new();
        let mut s = sender(net.now);
        let sa: SocketAddr = "198.51.100.1:1".parse().unwrap();
        let mapped: SocketAddr = "198.51.100.1:6000".parse().unwrap();
        // The Open is on its way; a port mapping arrives before the answer.
        s.set_hosts(net.now, vec![mapped]);
        let ev = net.run(&mut [(&mut s, sa)], Duration::from_millis(100), |_| false);
        let Some(ClientEvent::Opened { code, .. }) = ev[0].first().cloned() else {
            panic!("{ev:?}")
        };
        // Well before the 2 s keepalive, a joining viewer is told about the new host.
        let mut v = SignalClient::new(
            net.now,
            SERVER.parse().unwrap(),
            Role::Viewer {
                code,
                hosts: vec![],
            },
            5,
            ClientConfig::default(),
        );
        let va: SocketAddr = "198.51.100.2:2".parse().unwrap();
        let ev = net.run(
            &mut [(&mut s, sa), (&mut v, va)],
            Duration::from_millis(100),
            |_| false,
        );
        assert!(
            matches!(&ev[1][0], ClientEvent::Joined { sender, .. } if sender.contains(&mapped)),
            "{ev:?}"
        );
    }

    #[test]
    fn foreign_and_malformed_datagrams_ignored() {
        let now = Instant::now();
        let mut s = sender(now);
        s.handle_datagram(
            now,
            "203.0.113.9:7000".parse().unwrap(),
            &ServerMsg::Opened {
                txn: 77,
                code: RoomCode::from_bits(1),
                token: 1,
                reflexive: "203.0.113.9:1".parse().unwrap(),
                idle_secs: 15,
                web: None,
                ticket: [0; 16],
            }
            .encode(),
        );
        s.handle_datagram(now, SERVER.parse().unwrap(), &[0x21, 1, 65, 0]);
        assert_eq!(s.poll_event(), None);
    }
}
