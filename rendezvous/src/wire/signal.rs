//! Signalling datagrams between a peer and the rendezvous.
//!
//! They travel on the same UDP socket as the peer's QUIC traffic, so the rendezvous observes the
//! address the media will come from (the reflexive candidate). Every datagram starts with
//! [`SIGNAL_MAGIC`], which has the 0x40 bit clear: QUIC packets always set that "fixed bit"
//! (both ends disable greasing it), so one byte tells the two apart.
//!
//! Layout: `magic, version, type, body`. Integers are big-endian.

use std::net::SocketAddr;

use super::codec::{Reader, WireError, Writer};
use crate::code::RoomCode;

pub const SIGNAL_MAGIC: u8 = 0x21;
/// 2: rooms carry a ticket (reclaiming a code after a restart).
pub const SIGNAL_VERSION: u8 = 3;
/// Upper bound of a signalling datagram other than relay data; fits the QUIC minimum MTU.
pub const MAX_SIGNAL_LEN: usize = 1200;
/// Largest QUIC packet carried by the relay (quinn's MTU discovery stops at 1452).
pub const MAX_RELAY_PAYLOAD: usize = 1452;
/// Relay framing: magic, version, type, session.
pub const RELAY_OVERHEAD: usize = 3 + 8;
/// Upper bound of any datagram on the rendezvous port.
pub const MAX_DATAGRAM_LEN: usize = MAX_RELAY_PAYLOAD + RELAY_OVERHEAD;
/// Most candidate addresses a peer may announce.
pub const MAX_CANDIDATES: usize = 8;
/// Most viewers listed in one [`ServerMsg::Viewers`].
pub const MAX_LISTED_VIEWERS: usize = 16;

/// True when a datagram is signalling rather than QUIC.
pub fn is_signal(datagram: &[u8]) -> bool {
    datagram.first() == Some(&SIGNAL_MAGIC)
}

/// SHA-256 of the sender's self-signed certificate (DER).
pub type Fingerprint = [u8; 32];

/// Proof that a sender opened a room: a MAC of the code under the rendezvous's key, handed to the
/// sender only. With it the sender re-opens the same code after the rendezvous or itself restarts.
pub type RoomTicket = [u8; 16];

/// A code and the ticket that proves it is ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    pub code: RoomCode,
    pub ticket: RoomTicket,
}

/// Where a rendezvous serves browser viewers: the same host the client reached, this port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WebSide {
    pub port: u16,
    pub https: bool,
}

/// Identifies a member of a room: 0 is the sender, viewers count up from 1.
pub type MemberId = u32;
pub const SENDER_ID: MemberId = 0;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMsg {
    /// A sender asks for a room. Retries carry the same `txn` and get the same room. With a
    /// claim, the room with that code (its ticket checked): made again, or taken over.
    Open {
        txn: u64,
        hosts: Vec<SocketAddr>,
        fingerprint: Fingerprint,
        claim: Option<Claim>,
        /// The sender refuses the relay (`--force-direct`); viewers are told, so they can say why
        /// they could not connect.
        direct_only: bool,
    },
    /// A viewer joins a room by code.
    Join {
        txn: u64,
        code: RoomCode,
        hosts: Vec<SocketAddr>,
    },
    /// Keeps a membership (and the NAT mapping) alive. `token` was handed out with the membership.
    /// `hosts` are the member's current candidates (a router port mapping may arrive late).
    Keepalive {
        code: RoomCode,
        member: MemberId,
        token: u64,
        hosts: Vec<SocketAddr>,
    },
    /// Echoes a [`ServerMsg::Challenge`] from the address it was sent to: the member is there,
    /// and the server moves the membership (and its relay traffic) to that address.
    Prove {
        code: RoomCode,
        member: MemberId,
        token: u64,
        nonce: u64,
    },
    /// Ends a membership; the sender leaving closes the room.
    Leave {
        code: RoomCode,
        member: MemberId,
        token: u64,
    },
    /// A QUIC packet for the other member of relay `session`. The server forwards it only
    /// between the two addresses it knows for the session, never to an address a client names.
    Relay { session: u64, payload: Vec<u8> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewerInfo {
    pub id: MemberId,
    pub candidates: Vec<SocketAddr>,
    /// The relay session between the sender and this viewer.
    pub relay: u64,
    /// Shared by this viewer and the sender only: authenticates their punch datagrams.
    pub secret: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// No open room has this code (wrong code, or it expired).
    RoomNotFound = 1,
    RoomFull = 2,
    /// Too many requests from this address.
    RateLimited = 3,
    /// The token does not belong to this member.
    NotMember = 4,
    /// The server has too many rooms.
    ServerFull = 5,
    /// A claim whose ticket this rendezvous does not recognise.
    BadTicket = 6,
    /// The sender's network has as many rooms open as the server allows one network.
    TooManyRooms = 7,
    /// The server is shutting down (SIGTERM): senders re-open their rooms when it is back.
    ServerClosing = 8,
}

impl ErrorKind {
    fn from_u8(v: u8) -> Result<Self, WireError> {
        Ok(match v {
            1 => Self::RoomNotFound,
            2 => Self::RoomFull,
            3 => Self::RateLimited,
            4 => Self::NotMember,
            5 => Self::ServerFull,
            6 => Self::BadTicket,
            7 => Self::TooManyRooms,
            8 => Self::ServerClosing,
            _ => return Err(WireError::Invalid("error kind")),
        })
    }
}

impl ErrorKind {
    /// A short stable name (metrics labels, logs).
    pub fn name(self) -> &'static str {
        match self {
            Self::RoomNotFound => "room_not_found",
            Self::RoomFull => "room_full",
            Self::RateLimited => "rate_limited",
            Self::NotMember => "not_member",
            Self::ServerFull => "server_full",
            Self::BadTicket => "bad_ticket",
            Self::TooManyRooms => "too_many_rooms",
            Self::ServerClosing => "server_closing",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::RoomNotFound => {
                "no room with that code (check the code, or the sender has stopped)"
            }
            Self::RoomFull => "the room is full",
            Self::RateLimited => "too many requests; try again in a few seconds",
            Self::NotMember => "not a member of this room",
            Self::ServerFull => "the rendezvous has no room left",
            Self::ServerClosing => "the rendezvous is shutting down (a restart or maintenance)",
            Self::TooManyRooms => {
                "your network has as many rooms open as this rendezvous allows; close one first"
            }
            Self::BadTicket => {
                "the rendezvous does not recognise this room's ticket (it restarted with a new key)"
            }
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerMsg {
    Opened {
        txn: u64,
        code: RoomCode,
        token: u64,
        /// The address the server saw the request come from.
        reflexive: SocketAddr,
        /// Seconds the room lives without a keepalive.
        idle_secs: u16,
        /// The server's web side (browser viewers at `/r/CODE`), if it has one.
        web: Option<WebSide>,
        /// Keep it to re-open this code later (see [`RoomTicket`]).
        ticket: RoomTicket,
    },
    Joined {
        txn: u64,
        code: RoomCode,
        member: MemberId,
        token: u64,
        reflexive: SocketAddr,
        /// Sender's candidates: its host addresses, then the reflexive one the server observed.
        sender: Vec<SocketAddr>,
        fingerprint: Fingerprint,
        /// The relay session between this viewer and the sender.
        relay: u64,
        /// Authenticates punch datagrams between this viewer and the sender.
        secret: u64,
        /// The sender refuses the relay (`--force-direct`).
        sender_direct_only: bool,
    },
    /// Answer to a keepalive, and pushed to the sender when a viewer joins.
    Viewers {
        code: RoomCode,
        viewers: Vec<ViewerInfo>,
    },
    /// Answer to a keepalive from a viewer, with the sender's current candidates.
    Alive {
        code: RoomCode,
        sender: Vec<SocketAddr>,
    },
    /// A keepalive came from a new address: echo `nonce` in a [`ClientMsg::Prove`] from there
    /// before the server sends anything else to it. A member who forged its source address
    /// never sees this, so it cannot point the relay at somebody else.
    Challenge { code: RoomCode, nonce: u64 },
    Error {
        /// The request's txn, or 0 for keepalives.
        txn: u64,
        kind: ErrorKind,
    },
    /// A QUIC packet from the other member of relay `session`.
    Relay { session: u64, payload: Vec<u8> },
}

const T_OPEN: u8 = 1;
const T_JOIN: u8 = 2;
const T_KEEPALIVE: u8 = 3;
const T_LEAVE: u8 = 4;
const T_RELAY_UP: u8 = 5;
const T_PROVE: u8 = 6;
const T_OPENED: u8 = 65;
const T_JOINED: u8 = 66;
const T_VIEWERS: u8 = 67;
const T_ALIVE: u8 = 68;
const T_ERROR: u8 = 69;
const T_RELAY_DOWN: u8 = 70;
const T_CHALLENGE: u8 = 71;

/// Relay data is the hot path: framed and parsed without building a message.
pub fn relay_header(up: bool, session: u64) -> [u8; RELAY_OVERHEAD] {
    let mut h = [0u8; RELAY_OVERHEAD];
    h[0] = SIGNAL_MAGIC;
    h[1] = SIGNAL_VERSION;
    h[2] = if up { T_RELAY_UP } else { T_RELAY_DOWN };
    h[3..].copy_from_slice(&session.to_be_bytes());
    h
}

/// Turns relay data received from a member into the datagram forwarded to the other member.
pub fn relay_to_downlink(datagram: &mut [u8]) {
    if datagram.len() > 2 {
        datagram[2] = T_RELAY_DOWN;
    }
}

/// `Some((session, payload))` when `datagram` is relay data in the given direction.
pub fn parse_relay(up: bool, datagram: &[u8]) -> Option<(u64, &[u8])> {
    let ty = if up { T_RELAY_UP } else { T_RELAY_DOWN };
    if datagram.len() <= RELAY_OVERHEAD
        || datagram.len() > MAX_DATAGRAM_LEN
        || datagram[..3] != [SIGNAL_MAGIC, SIGNAL_VERSION, ty]
    {
        return None;
    }
    let mut s = [0u8; 8];
    s.copy_from_slice(&datagram[3..RELAY_OVERHEAD]);
    Some((u64::from_be_bytes(s), &datagram[RELAY_OVERHEAD..]))
}

fn header(w: &mut Writer, ty: u8) {
    w.u8(SIGNAL_MAGIC);
    w.u8(SIGNAL_VERSION);
    w.u8(ty);
}

fn read_header(buf: &[u8]) -> Result<(u8, Reader<'_>), WireError> {
    if buf.len() > MAX_DATAGRAM_LEN {
        return Err(WireError::TooLong(buf.len()));
    }
    let mut r = Reader::new(buf);
    if r.u8()? != SIGNAL_MAGIC {
        return Err(WireError::BadMagic);
    }
    let v = r.u8()?;
    if v != SIGNAL_VERSION {
        return Err(WireError::Version(v));
    }
    let ty = r.u8()?;
    if buf.len() > MAX_SIGNAL_LEN && ty != T_RELAY_UP && ty != T_RELAY_DOWN {
        return Err(WireError::TooLong(buf.len()));
    }
    Ok((ty, r))
}

fn relay_payload(r: &mut Reader, rest: usize) -> Result<Vec<u8>, WireError> {
    if rest == 0 || rest > MAX_RELAY_PAYLOAD {
        return Err(WireError::Invalid("relay payload length"));
    }
    Ok(r.bytes(rest)?.to_vec())
}

fn flag(r: &mut Reader) -> Result<bool, WireError> {
    match r.u8()? {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(WireError::Invalid("flag")),
    }
}

fn code(r: &mut Reader) -> Result<RoomCode, WireError> {
    let bits = r.u32()?;
    if bits >> crate::code::CODE_BITS != 0 {
        return Err(WireError::Invalid("room code"));
    }
    Ok(RoomCode::from_bits(bits))
}

impl ClientMsg {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        match self {
            Self::Open {
                txn,
                hosts,
                fingerprint,
                claim,
                direct_only,
            } => {
                header(&mut w, T_OPEN);
                w.u64(*txn);
                w.addrs(hosts, MAX_CANDIDATES);
                w.bytes(fingerprint);
                w.u8(claim.is_some() as u8);
                if let Some(c) = claim {
                    w.u32(c.code.bits());
                    w.bytes(&c.ticket);
                }
                w.u8(*direct_only as u8);
            }
            Self::Join { txn, code, hosts } => {
                header(&mut w, T_JOIN);
                w.u64(*txn);
                w.u32(code.bits());
                w.addrs(hosts, MAX_CANDIDATES);
            }
            Self::Keepalive {
                code,
                member,
                token,
                hosts,
            } => {
                header(&mut w, T_KEEPALIVE);
                w.u32(code.bits());
                w.u32(*member);
                w.u64(*token);
                w.addrs(hosts, MAX_CANDIDATES);
            }
            Self::Prove {
                code,
                member,
                token,
                nonce,
            } => {
                header(&mut w, T_PROVE);
                w.u32(code.bits());
                w.u32(*member);
                w.u64(*token);
                w.u64(*nonce);
            }
            Self::Leave {
                code,
                member,
                token,
            } => {
                header(&mut w, T_LEAVE);
                w.u32(code.bits());
                w.u32(*member);
                w.u64(*token);
            }
            Self::Relay { session, payload } => {
                w.bytes(&relay_header(true, *session));
                w.bytes(payload);
            }
        }
        w.buf
    }

    pub fn decode(buf: &[u8]) -> Result<Self, WireError> {
        let (ty, mut r) = read_header(buf)?;
        let msg = match ty {
            T_OPEN => Self::Open {
                txn: r.u64()?,
                hosts: r.addrs(MAX_CANDIDATES)?,
                fingerprint: r.array()?,
                claim: match r.u8()? {
                    0 => None,
                    1 => Some(Claim {
                        code: code(&mut r)?,
                        ticket: r.array()?,
                    }),
                    _ => return Err(WireError::Invalid("claim flag")),
                },
                direct_only: flag(&mut r)?,
            },
            T_JOIN => Self::Join {
                txn: r.u64()?,
                code: code(&mut r)?,
                hosts: r.addrs(MAX_CANDIDATES)?,
            },
            T_KEEPALIVE => Self::Keepalive {
                code: code(&mut r)?,
                member: r.u32()?,
                token: r.u64()?,
                hosts: r.addrs(MAX_CANDIDATES)?,
            },
            T_PROVE => Self::Prove {
                code: code(&mut r)?,
                member: r.u32()?,
                token: r.u64()?,
                nonce: r.u64()?,
            },
            T_LEAVE => Self::Leave {
                code: code(&mut r)?,
                member: r.u32()?,
                token: r.u64()?,
            },
            T_RELAY_UP => Self::Relay {
                session: r.u64()?,
                payload: relay_payload(&mut r, buf.len().saturating_sub(RELAY_OVERHEAD))?,
            },
            t => return Err(WireError::UnknownType(t)),
        };
        r.finish()?;
        Ok(msg)
    }
}

impl ServerMsg {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        match self {
            Self::Opened {
                txn,
                code,
                token,
                reflexive,
                idle_secs,
                web,
                ticket,
            } => {
                header(&mut w, T_OPENED);
                w.u64(*txn);
                w.u32(code.bits());
                w.u64(*token);
                w.addr(reflexive);
                w.u16(*idle_secs);
                // Port 0: no web side.
                w.u16(web.map_or(0, |s| s.port));
                w.u8(web.is_some_and(|s| s.https) as u8);
                w.bytes(ticket);
            }
            Self::Joined {
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
            } => {
                header(&mut w, T_JOINED);
                w.u64(*txn);
                w.u32(code.bits());
                w.u32(*member);
                w.u64(*token);
                w.addr(reflexive);
                w.addrs(sender, MAX_CANDIDATES + 1);
                w.bytes(fingerprint);
                w.u64(*relay);
                w.u64(*secret);
                w.u8(*sender_direct_only as u8);
            }
            Self::Viewers { code, viewers } => {
                header(&mut w, T_VIEWERS);
                w.u32(code.bits());
                // As many viewers as fit one datagram; keepalive answers repeat the list.
                let count_at = w.buf.len();
                w.u8(0);
                let mut n = 0u8;
                for v in viewers.iter().take(MAX_LISTED_VIEWERS) {
                    let mut one = Writer::default();
                    one.u32(v.id);
                    one.addrs(&v.candidates, MAX_CANDIDATES + 1);
                    one.u64(v.relay);
                    one.u64(v.secret);
                    if w.buf.len() + one.buf.len() > MAX_SIGNAL_LEN {
                        break;
                    }
                    w.bytes(&one.buf);
                    n += 1;
                }
                w.buf[count_at] = n;
            }
            Self::Alive { code, sender } => {
                header(&mut w, T_ALIVE);
                w.u32(code.bits());
                w.addrs(sender, MAX_CANDIDATES + 1);
            }
            Self::Challenge { code, nonce } => {
                header(&mut w, T_CHALLENGE);
                w.u32(code.bits());
                w.u64(*nonce);
            }
            Self::Error { txn, kind } => {
                header(&mut w, T_ERROR);
                w.u64(*txn);
                w.u8(*kind as u8);
            }
            Self::Relay { session, payload } => {
                w.bytes(&relay_header(false, *session));
                w.bytes(payload);
            }
        }
        w.buf
    }

    pub fn decode(buf: &[u8]) -> Result<Self, WireError> {
        let (ty, mut r) = read_header(buf)?;
        let msg = match ty {
            T_OPENED => Self::Opened {
                txn: r.u64()?,
                code: code(&mut r)?,
                token: r.u64()?,
                reflexive: r.addr()?,
                idle_secs: r.u16()?,
                web: match (r.u16()?, r.u8()?) {
                    (0, _) => None,
                    (port, flags) => Some(WebSide {
                        port,
                        https: flags & 1 == 1,
                    }),
                },
                ticket: r.array()?,
            },
            T_JOINED => Self::Joined {
                txn: r.u64()?,
                code: code(&mut r)?,
                member: r.u32()?,
                token: r.u64()?,
                reflexive: r.addr()?,
                sender: r.addrs(MAX_CANDIDATES + 1)?,
                fingerprint: r.array()?,
                relay: r.u64()?,
                secret: r.u64()?,
                sender_direct_only: flag(&mut r)?,
            },
            T_VIEWERS => {
                let code = code(&mut r)?;
                let n = r.u8()? as usize;
                if n > MAX_LISTED_VIEWERS {
                    return Err(WireError::Invalid("viewer count"));
                }
                let viewers = (0..n)
                    .map(|_| {
                        Ok(ViewerInfo {
                            id: r.u32()?,
                            candidates: r.addrs(MAX_CANDIDATES + 1)?,
                            relay: r.u64()?,
                            secret: r.u64()?,
                        })
                    })
                    .collect::<Result<_, WireError>>()?;
                Self::Viewers { code, viewers }
            }
            T_ALIVE => Self::Alive {
                code: code(&mut r)?,
                sender: r.addrs(MAX_CANDIDATES + 1)?,
            },
            T_CHALLENGE => Self::Challenge {
                code: code(&mut r)?,
                nonce: r.u64()?,
            },
            T_ERROR => Self::Error {
                txn: r.u64()?,
                kind: ErrorKind::from_u8(r.u8()?)?,
            },
            T_RELAY_DOWN => Self::Relay {
                session: r.u64()?,
                payload: relay_payload(&mut r, buf.len().saturating_sub(RELAY_OVERHEAD))?,
            },
            t => return Err(WireError::UnknownType(t)),
        };
        r.finish()?;
        Ok(msg)
    }
}

/// Hole punching datagrams between the two peers, on their media sockets. `secret` comes from
/// the rendezvous to the two members of a relay session only, so nobody else can fake a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerMsg {
    /// `to`: the address the ping was sent to, so the receiver can tell whether it came in
    /// through its router's port mapping.
    Ping {
        session: u64,
        secret: u64,
        txn: u64,
        to: SocketAddr,
    },
    /// `via_mapping`: the ping arrived at the answerer's port-mapped address.
    Pong {
        session: u64,
        secret: u64,
        txn: u64,
        via_mapping: bool,
    },
}

const T_PING: u8 = 96;
const T_PONG: u8 = 97;

impl PeerMsg {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        match *self {
            Self::Ping {
                session,
                secret,
                txn,
                to,
            } => {
                header(&mut w, T_PING);
                w.u64(session);
                w.u64(secret);
                w.u64(txn);
                w.addr(&to);
            }
            Self::Pong {
                session,
                secret,
                txn,
                via_mapping,
            } => {
                header(&mut w, T_PONG);
                w.u64(session);
                w.u64(secret);
                w.u64(txn);
                w.u8(via_mapping as u8);
            }
        }
        w.buf
    }

    pub fn decode(buf: &[u8]) -> Result<Self, WireError> {
        let (ty, mut r) = read_header(buf)?;
        let msg = match ty {
            T_PING => Self::Ping {
                session: r.u64()?,
                secret: r.u64()?,
                txn: r.u64()?,
                to: r.addr()?,
            },
            T_PONG => Self::Pong {
                session: r.u64()?,
                secret: r.u64()?,
                txn: r.u64()?,
                via_mapping: match r.u8()? {
                    0 => false,
                    1 => true,
                    _ => return Err(WireError::Invalid("pong flag")),
                },
            },
            t => return Err(WireError::UnknownType(t)),
        };
        r.finish()?;
        Ok(msg)
    }

    pub fn session(&self) -> u64 {
        match self {
            Self::Ping { session, .. } | Self::Pong { session, .. } => *session,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{IpAddr, Ipv6Addr};

    fn addr() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::from((ip, p))),
            (any::<[u8; 16]>(), any::<u16>())
                .prop_map(|(ip, p)| SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), p)),
        ]
    }
    fn addrs() -> impl Strategy<Value = Vec<SocketAddr>> {
        proptest::collection::vec(addr(), 0..=MAX_CANDIDATES)
    }
    fn room() -> impl Strategy<Value = RoomCode> {
        any::<u32>().prop_map(RoomCode::from_bits)
    }

    fn client_msg() -> impl Strategy<Value = ClientMsg> {
        prop_oneof![
            (
                any::<u64>(),
                addrs(),
                any::<[u8; 32]>(),
                proptest::option::of((room(), any::<[u8; 16]>())),
                any::<bool>()
            )
                .prop_map(|(txn, hosts, fingerprint, claim, direct_only)| {
                    ClientMsg::Open {
                        txn,
                        hosts,
                        fingerprint,
                        claim: claim.map(|(code, ticket)| Claim { code, ticket }),
                        direct_only,
                    }
                }),
            (any::<u64>(), room(), addrs()).prop_map(|(txn, code, hosts)| ClientMsg::Join {
                txn,
                code,
                hosts
            }),
            (room(), any::<u32>(), any::<u64>(), addrs()).prop_map(
                |(code, member, token, hosts)| ClientMsg::Keepalive {
                    code,
                    member,
                    token,
                    hosts,
                }
            ),
            (room(), any::<u32>(), any::<u64>(), any::<u64>()).prop_map(
                |(code, member, token, nonce)| ClientMsg::Prove {
                    code,
                    member,
                    token,
                    nonce,
                }
            ),
            (room(), any::<u32>(), any::<u64>()).prop_map(|(code, member, token)| {
                ClientMsg::Leave {
                    code,
                    member,
                    token,
                }
            }),
            (
                any::<u64>(),
                proptest::collection::vec(any::<u8>(), 1..=MAX_RELAY_PAYLOAD)
            )
                .prop_map(|(session, payload)| ClientMsg::Relay { session, payload }),
        ]
    }

    fn server_msg() -> impl Strategy<Value = ServerMsg> {
        let viewers = proptest::collection::vec(
            (any::<u32>(), addrs(), any::<u64>()).prop_map(|(id, candidates, relay)| ViewerInfo {
                secret: relay.rotate_left(7),
                id,
                candidates,
                relay,
            }),
            0..=MAX_LISTED_VIEWERS,
        );
        prop_oneof![
            (
                any::<u64>(),
                room(),
                any::<u64>(),
                addr(),
                any::<u16>(),
                proptest::option::of((1..=u16::MAX, any::<bool>())),
                any::<[u8; 16]>()
            )
                .prop_map(|(txn, code, token, reflexive, idle_secs, web, ticket)| {
                    ServerMsg::Opened {
                        txn,
                        code,
                        token,
                        reflexive,
                        idle_secs,
                        web: web.map(|(port, https)| WebSide { port, https }),
                        ticket,
                    }
                }),
            (
                any::<u64>(),
                room(),
                any::<u32>(),
                any::<u64>(),
                addr(),
                addrs(),
                any::<[u8; 32]>()
            )
                .prop_map(
                    |(txn, code, member, token, reflexive, sender, fingerprint)| {
                        ServerMsg::Joined {
                            txn,
                            code,
                            member,
                            token,
                            reflexive,
                            sender,
                            fingerprint,
                            relay: txn ^ token,
                            secret: txn.wrapping_add(token),
                            sender_direct_only: token % 2 == 0,
                        }
                    }
                ),
            (
                any::<u64>(),
                proptest::collection::vec(any::<u8>(), 1..=MAX_RELAY_PAYLOAD)
            )
                .prop_map(|(session, payload)| ServerMsg::Relay { session, payload }),
            (room(), viewers).prop_map(|(code, viewers)| ServerMsg::Viewers { code, viewers }),
            (room(), addrs()).prop_map(|(code, sender)| ServerMsg::Alive { code, sender }),
            (room(), any::<u64>()).prop_map(|(code, nonce)| ServerMsg::Challenge { code, nonce }),
            (any::<u64>(), 1u8..=8).prop_map(|(txn, k)| ServerMsg::Error {
                txn,
                kind: ErrorKind::from_u8(k).unwrap()
            }),
        ]
    }

    proptest! {
        #[test]
        fn client_roundtrip(m in client_msg()) {
            let bytes = m.encode();
            prop_assert!(bytes.len() <= MAX_DATAGRAM_LEN);
            if let ClientMsg::Relay { session, payload } = &m {
                prop_assert_eq!(parse_relay(true, &bytes), Some((*session, &payload[..])));
                prop_assert_eq!(parse_relay(false, &bytes), None);
            } else {
                prop_assert!(bytes.len() <= MAX_SIGNAL_LEN);
            }
            prop_assert!(is_signal(&bytes));
            prop_assert_eq!(ClientMsg::decode(&bytes).unwrap(), m);
        }

        #[test]
        fn server_roundtrip(m in server_msg()) {
            let bytes = m.encode();
            prop_assert!(bytes.len() <= MAX_DATAGRAM_LEN);
            let back = ServerMsg::decode(&bytes).unwrap();
            match (&back, &m) {
                // A long viewer list is cut to what fits one datagram.
                (ServerMsg::Viewers { code: a, viewers: va }, ServerMsg::Viewers { code: b, viewers: vb }) => {
                    prop_assert_eq!(a, b);
                    prop_assert!(!va.is_empty() || vb.is_empty());
                    prop_assert_eq!(&vb[..va.len()], &va[..]);
                }
                _ => prop_assert_eq!(back, m),
            }
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1600)) {
            let _ = ClientMsg::decode(&bytes);
            let _ = ServerMsg::decode(&bytes);
            let _ = parse_relay(true, &bytes);
            let _ = parse_relay(false, &bytes);
        }

        #[test]
        fn truncation_is_an_error(m in client_msg(), cut in 0usize..64) {
            // Relay payloads have no length field: a shorter datagram is a shorter packet.
            prop_assume!(!matches!(m, ClientMsg::Relay { .. }));
            let bytes = m.encode();
            let cut = cut.min(bytes.len() - 1);
            prop_assert!(ClientMsg::decode(&bytes[..cut]).is_err());
        }
    }

    proptest! {
        #[test]
        fn peer_roundtrip(session in any::<u64>(), secret in any::<u64>(), txn in any::<u64>(), ping in any::<bool>(), to in addr()) {
            let m = if ping {
                PeerMsg::Ping { session, secret, txn, to }
            } else {
                PeerMsg::Pong { session, secret, txn, via_mapping: txn % 2 == 0 }
            };
            let b = m.encode();
            prop_assert!(is_signal(&b));
            prop_assert_eq!(PeerMsg::decode(&b).unwrap(), m);
            prop_assert!(ClientMsg::decode(&b).is_err());
            prop_assert!(ServerMsg::decode(&b).is_err());
        }
    }

    #[test]
    fn quic_packets_are_not_signal() {
        // Long header (Initial) and short header first bytes both carry the fixed bit 0x40.
        assert!(!is_signal(&[0xc3, 0, 0, 0, 1]));
        assert!(!is_signal(&[0x41, 1, 2]));
        assert_eq!(SIGNAL_MAGIC & 0x40, 0);
    }
}
