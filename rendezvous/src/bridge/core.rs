//! The browser side of the bridge, sans-IO: one str0m [`Rtc`] per browser viewer, all on one UDP
//! port (ICE-lite), fed the sender's H.264 access units as they are (no transcoding).
//!
//! `(now, input) -> outputs` like str0m itself: feed offers, datagrams, access units and
//! timeouts; drain [`BridgeCore::poll_output`]; sleep until [`BridgeCore::poll_timeout`].

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::change::SdpOffer;
use str0m::format::Codec;
use str0m::media::{Direction, Frequency, MediaKind, MediaTime, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc, RtcConfig};

use crate::code::RoomCode;

/// One H.264 access unit (Annex B) as the sender encoded it.
#[derive(Debug, Clone)]
pub struct AccessUnit {
    pub seq: u64,
    pub keyframe: bool,
    /// Capture time, µs since the Unix epoch (the sender's clock).
    pub capture_us: u64,
    pub data: Arc<[u8]>,
}

/// A browser viewer, as the WHEP resource names it.
pub type PeerId = u64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OfferError {
    #[error("the SDP offer does not parse: {0}")]
    BadSdp(String),
    #[error("the offer has no H.264 (packetization-mode 1) video to receive; this stream is H.264 Constrained Baseline")]
    NoCodec,
    #[error("the offer has no video to receive")]
    NoVideo,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoreOutput {
    Transmit {
        source: SocketAddr,
        destination: SocketAddr,
        contents: Vec<u8>,
    },
    /// A viewer joined or lost a picture: the room's sender should encode a keyframe.
    WantKeyframe(RoomCode),
    /// ICE and DTLS are up for this viewer.
    Connected { peer: PeerId, room: RoomCode },
    /// This viewer is gone (left, timed out, or its room ended).
    Gone { peer: PeerId, room: RoomCode },
}

/// Most access units kept for a joining browser (a third of a second at 30 fps): older ones
/// would only delay its first picture.
const REPLAY_MAX: usize = 10;

/// How long a viewer may take from its offer to a working connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

struct Peer {
    id: PeerId,
    room: RoomCode,
    rtc: Rtc,
    video: (Mid, Pt),
    connected: bool,
    /// Nothing is sent before a keyframe: a browser cannot start from a delta frame.
    started: bool,
    created: Instant,
    timeout: Option<Instant>,
}

pub struct BridgeCore {
    local: Vec<SocketAddr>,
    /// One DTLS certificate for every browser: generating one per offer delays each answer.
    cert: Option<str0m::crypto::dtls::DtlsCert>,
    peers: Vec<Peer>,
    /// Per room, the access units since the last keyframe (while few): a browser whose
    /// connection completes just after a keyframe starts from it instead of waiting for another.
    recent: HashMap<RoomCode, Vec<AccessUnit>>,
    next_id: PeerId,
    out: VecDeque<CoreOutput>,
}

impl BridgeCore {
    /// `local`: the addresses browsers can reach the bridge's UDP port on (its ICE candidates).
    pub fn new(local: Vec<SocketAddr>) -> Self {
        Self {
            local,
            cert: str0m::crypto::from_feature_flags()
                .dtls_provider
                .generate_certificate(),
            peers: Vec::new(),
            recent: HashMap::new(),
            next_id: 1,
            out: VecDeque::new(),
        }
    }

    /// A WHEP offer for `room`: returns the viewer's id and the SDP answer.
    pub fn accept_offer(
        &mut self,
        now: Instant,
        room: RoomCode,
        offer: &str,
    ) -> Result<(PeerId, String), OfferError> {
        let offer =
            SdpOffer::from_sdp_string(offer).map_err(|e| OfferError::BadSdp(e.to_string()))?;
        let mut config = RtcConfig::new()
            .set_ice_lite(true)
            .clear_codecs()
            .enable_h264(true);
        if let Some(cert) = &self.cert {
            config = config.set_dtls_cert(cert.clone());
        }
        let mut rtc = config.build(now);
        for addr in &self.local {
            if let Ok(c) = Candidate::host(*addr, "udp") {
                rtc.add_local_candidate(c);
            }
        }
        let mids: Vec<Mid> = offer.media_lines.iter().map(|l| l.mid()).collect();
        let answer = rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| OfferError::BadSdp(e.to_string()))?;
        let videos: Vec<Mid> = mids
            .into_iter()
            .filter(|mid| {
                rtc.media(*mid).is_some_and(|m| {
                    m.kind() == MediaKind::Video
                        && matches!(m.direction(), Direction::SendOnly | Direction::SendRecv)
                })
            })
            .collect();
        if videos.is_empty() {
            return Err(OfferError::NoVideo);
        }
        let video = videos
            .iter()
            .find_map(|mid| pick_h264(&mut rtc, *mid).map(|pt| (*mid, pt)))
            .ok_or(OfferError::NoCodec)?;
        let id = self.next_id;
        self.next_id += 1;
        let mut peer = Peer {
            id,
            room,
            rtc,
            video,
            connected: false,
            started: false,
            created: now,
            timeout: None,
        };
        // ICE-lite sends nothing before the browser does; this only learns the first timeout.
        drive(&mut peer, &mut self.out, |_, _| {});
        tracing::debug!(peer = id, %room, "browser viewer offered");
        self.peers.push(peer);
        // Ask now: the keyframe is on its way while ICE and DTLS finish, and is replayed then.
        self.out.push_back(CoreOutput::WantKeyframe(room));
        Ok((id, answer.to_sdp_string()))
    }

    /// The viewer left (WHEP `DELETE`). False when there is no such viewer in `room`.
    pub fn remove(&mut self, room: RoomCode, id: PeerId) -> bool {
        let Some(i) = self.peers.iter().position(|p| p.id == id && p.room == room) else {
            return false;
        };
        let mut p = self.peers.swap_remove(i);
        p.rtc.disconnect();
        self.out.push_back(CoreOutput::Gone { peer: id, room });
        true
    }

    /// The room's stream ended: every viewer of it is let go.
    pub fn end_room(&mut self, room: RoomCode) {
        self.recent.remove(&room);
        let ids: Vec<_> = self
            .peers
            .iter()
            .filter(|p| p.room == room)
            .map(|p| p.id)
            .collect();
        for id in ids {
            self.remove(room, id);
        }
    }

    /// A datagram for the bridge's port. False when no viewer claims it.
    pub fn handle_receive(
        &mut self,
        now: Instant,
        source: SocketAddr,
        destination: SocketAddr,
        data: &[u8],
    ) -> bool {
        let Ok(contents) = data.try_into() else {
            return false;
        };
        let input = Input::Receive(
            now,
            Receive {
                proto: Protocol::Udp,
                source,
                destination,
                contents,
            },
        );
        let Some(i) = self.peers.iter().position(|p| p.rtc.accepts(&input)) else {
            return false;
        };
        if let Err(e) = self.peers[i].rtc.handle_input(input) {
            tracing::debug!(peer = self.peers[i].id, "bad input from a browser: {e}");
        }
        self.drive_peer(now, i);
        true
    }

    /// An access unit of `room`'s stream: sent to every connected viewer of the room.
    pub fn handle_access_unit(&mut self, now: Instant, room: RoomCode, au: &AccessUnit) {
        let recent = self.recent.entry(room).or_default();
        if au.keyframe {
            recent.clear();
            recent.push(au.clone());
        } else if !recent.is_empty() && recent.len() < REPLAY_MAX {
            recent.push(au.clone());
        } else {
            recent.clear();
        }
        for i in 0..self.peers.len() {
            let p = &mut self.peers[i];
            if p.room != room || !p.connected {
                continue;
            }
            write(p, now, au);
            self.drive_peer(now, i);
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.peers.len() {
            let p = &mut self.peers[i];
            if !p.connected && now.duration_since(p.created) > CONNECT_TIMEOUT {
                let (room, id) = (p.room, p.id);
                tracing::debug!(peer = id, "browser viewer never connected");
                self.remove(room, id);
                continue;
            }
            if p.timeout.is_some_and(|t| t <= now) {
                if let Err(e) = p.rtc.handle_input(Input::Timeout(now)) {
                    tracing::debug!(peer = p.id, "timeout: {e}");
                }
                if self.drive_peer(now, i) {
                    continue;
                }
            }
            i += 1;
        }
    }

    pub fn poll_output(&mut self) -> Option<CoreOutput> {
        self.out.pop_front()
    }

    /// When [`BridgeCore::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.peers
            .iter()
            .flat_map(|p| {
                let connect = (!p.connected).then(|| p.created + CONNECT_TIMEOUT);
                [p.timeout, connect]
            })
            .flatten()
            .min()
    }

    /// Viewers of `room`, connected or not.
    pub fn viewers(&self, room: RoomCode) -> usize {
        self.peers.iter().filter(|p| p.room == room).count()
    }

    /// Drains peer `i`'s output; true when it was removed (the index now names another peer).
    fn drive_peer(&mut self, now: Instant, i: usize) -> bool {
        let peer = &mut self.peers[i];
        let mut want_keyframe = false;
        let mut became_connected = false;
        let mut gone = false;
        drive(peer, &mut self.out, |_, ev| match ev {
            Event::Connected => became_connected = true,
            Event::KeyframeRequest(_) => want_keyframe = true,
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => gone = true,
            _ => {}
        });
        let (id, room) = (peer.id, peer.room);
        if became_connected && !peer.connected {
            peer.connected = true;
            self.out.push_back(CoreOutput::Connected { peer: id, room });
            // First picture fast: the latest keyframe and what followed it, else a new one.
            match self.recent.get(&room).filter(|r| !r.is_empty()) {
                Some(recent) => {
                    for au in recent {
                        write(peer, now, au);
                    }
                    drive(peer, &mut self.out, |_, _| {});
                }
                None => want_keyframe = true,
            }
        }
        if want_keyframe {
            self.out.push_back(CoreOutput::WantKeyframe(room));
        }
        if gone || !peer.rtc.is_alive() {
            tracing::debug!(peer = id, "browser viewer disconnected");
            self.remove(room, id);
            return true;
        }
        false
    }
}

/// Sends one access unit to a connected peer, from its first keyframe on.
fn write(p: &mut Peer, now: Instant, au: &AccessUnit) {
    if !p.started && !au.keyframe {
        return;
    }
    p.started = true;
    // 90 kHz RTP clock from the capture time: browsers pace playout by it.
    let rtp = MediaTime::new(au.capture_us * 9 / 100, Frequency::NINETY_KHZ);
    let (mid, pt) = p.video;
    if let Some(w) = p.rtc.writer(mid) {
        if let Err(e) = w.write(pt, now, rtp, au.data.clone()) {
            tracing::debug!(peer = p.id, "write failed: {e}");
        }
    }
}

/// Polls an [`Rtc`] until it only has a timeout left; transmits go to `out`, events to `on`.
fn drive(peer: &mut Peer, out: &mut VecDeque<CoreOutput>, mut on: impl FnMut(&mut Peer, Event)) {
    loop {
        match peer.rtc.poll_output() {
            Ok(Output::Timeout(t)) => {
                peer.timeout = Some(t);
                return;
            }
            Ok(Output::Transmit(t)) => out.push_back(CoreOutput::Transmit {
                source: t.source,
                destination: t.destination,
                contents: t.contents.to_vec(),
            }),
            Ok(Output::Event(e)) => on(peer, e),
            Err(e) => {
                tracing::debug!(peer = peer.id, "rtc failed: {e}");
                peer.rtc.disconnect();
                peer.timeout = None;
                return;
            }
        }
    }
}

/// The negotiated H.264 payload type, preferring Constrained Baseline (what the sender encodes).
fn pick_h264(rtc: &mut Rtc, mid: Mid) -> Option<Pt> {
    let w = rtc.writer(mid)?;
    let mut best: Option<(u8, Pt)> = None;
    for p in w.payload_params() {
        let spec = p.spec();
        if spec.codec != Codec::H264 || spec.format.packetization_mode != Some(1) {
            continue;
        }
        let plid = spec.format.profile_level_id.unwrap_or(0x42e01f);
        let rank = match plid >> 8 {
            0x42e0 => 0,
            0x4200 | 0x4d00 => 1,
            _ => 2,
        };
        if best.is_none_or(|(r, _)| rank < r) {
            best = Some((rank, p.pt()));
        }
    }
    best.map(|(_, pt)| pt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use str0m::change::{SdpAnswer, SdpPendingOffer};

    // Documentation addresses: nothing is sent anywhere, datagrams are handed over in memory.
    const BRIDGE: &str = "192.0.2.1:4000";

    fn room() -> RoomCode {
        RoomCode::from_bits(0x1234)
    }

    /// A browser stand-in: a full-ICE str0m peer that receives video.
    struct Browser {
        rtc: Rtc,
        addr: SocketAddr,
        frames: Vec<Vec<u8>>,
        connected: bool,
    }

    impl Browser {
        fn offer(
            now: Instant,
            n: u8,
            configure: impl FnOnce(RtcConfig) -> RtcConfig,
        ) -> (Self, String, SdpPendingOffer) {
            let addr: SocketAddr = format!("198.51.100.{n}:5000").parse().unwrap();
            let mut rtc = configure(RtcConfig::new()).build(now);
            rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
            let mut api = rtc.sdp_api();
            api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
            let (offer, pending) = api.apply().unwrap();
            let b = Self {
                rtc,
                addr,
                frames: Vec::new(),
                connected: false,
            };
            (b, offer.to_sdp_string(), pending)
        }

        fn answer(&mut self, pending: SdpPendingOffer, answer: &str) {
            let answer = SdpAnswer::from_sdp_string(answer).unwrap();
            self.rtc.sdp_api().accept_answer(pending, answer).unwrap();
        }

        /// Drains the browser; returns its datagrams and next timeout.
        fn poll(&mut self) -> (Vec<(SocketAddr, Vec<u8>)>, Instant) {
            let mut out = Vec::new();
            loop {
                match self.rtc.poll_output().unwrap() {
                    Output::Timeout(t) => return (out, t),
                    Output::Transmit(t) => out.push((t.destination, t.contents.to_vec())),
                    Output::Event(Event::Connected) => self.connected = true,
                    Output::Event(Event::MediaData(d)) => self.frames.push(d.data.to_vec()),
                    Output::Event(_) => {}
                }
            }
        }
    }

    /// Runs browsers and core on a virtual clock until `until` holds or 10 virtual seconds pass.
    fn run(
        now: &mut Instant,
        core: &mut BridgeCore,
        browsers: &mut [Browser],
        mut until: impl FnMut(&BridgeCore, &[Browser]) -> bool,
    ) -> Vec<CoreOutput> {
        let end = *now + Duration::from_secs(10);
        let mut events = Vec::new();
        while *now < end {
            if until(core, browsers) {
                return events;
            }
            let mut next = *now + Duration::from_millis(50);
            for b in browsers.iter_mut() {
                let (out, t) = b.poll();
                next = next.min(t);
                for (dst, data) in out {
                    assert_eq!(dst, BRIDGE.parse::<SocketAddr>().unwrap());
                    core.handle_receive(*now, b.addr, dst, &data);
                }
            }
            while let Some(o) = core.poll_output() {
                match o {
                    CoreOutput::Transmit {
                        source,
                        destination,
                        contents,
                    } => {
                        let b = browsers.iter_mut().find(|b| b.addr == destination).unwrap();
                        let input = Input::Receive(
                            *now,
                            Receive {
                                proto: Protocol::Udp,
                                source,
                                destination,
                                contents: contents.as_slice().try_into().unwrap(),
                            },
                        );
                        b.rtc.handle_input(input).unwrap();
                    }
                    other => events.push(other),
                }
            }
            if let Some(t) = core.poll_timeout() {
                next = next.min(t);
            }
            *now = next.max(*now + Duration::from_millis(1));
            for b in browsers.iter_mut() {
                b.rtc.handle_input(Input::Timeout(*now)).unwrap();
            }
            core.handle_timeout(*now);
        }
        panic!("condition not reached in 10 virtual seconds; events {events:?}");
    }

    fn au(seq: u64, keyframe: bool) -> AccessUnit {
        // SPS, PPS and a slice for a keyframe; one slice otherwise. Content is opaque to RTP.
        let mut d = Vec::new();
        if keyframe {
            d.extend_from_slice(&[0, 0, 0, 1, 0x67, 0x42, 0xe0, 0x1f, 0xaa]);
            d.extend_from_slice(&[0, 0, 0, 1, 0x68, 0xce, 0x3c, 0x80]);
            d.extend_from_slice(&[0, 0, 0, 1, 0x65]);
        } else {
            d.extend_from_slice(&[0, 0, 0, 1, 0x41]);
        }
        d.extend(std::iter::repeat_n(seq as u8, 3000));
        AccessUnit {
            seq,
            keyframe,
            capture_us: 1_000_000 + seq * 33_333,
            data: d.into(),
        }
    }

    fn connect(now: &mut Instant, core: &mut BridgeCore, n: u8) -> (Browser, PeerId) {
        let (mut b, offer, pending) = Browser::offer(*now, n, |c| c);
        let (id, answer) = core.accept_offer(*now, room(), &offer).unwrap();
        b.answer(pending, &answer);
        let mut bs = [b];
        let ev = run(now, core, &mut bs, |_, b| b[0].connected);
        let [b] = bs;
        // The bridge may report its side a moment later; run until it does.
        let mut bs = [b];
        let mut seen = ev
            .iter()
            .any(|e| matches!(e, CoreOutput::Connected { peer, .. } if *peer == id));
        if !seen {
            let ev = run(now, core, &mut bs, |c, _| {
                c.peers.iter().any(|p| p.id == id && p.connected)
            });
            seen = ev.iter().any(|e| matches!(e, CoreOutput::WantKeyframe(_)))
                || core.peers.iter().any(|p| p.id == id && p.connected);
        }
        assert!(seen);
        let [b] = bs;
        (b, id)
    }

    #[test]
    fn browser_gets_access_units_from_the_first_keyframe_on() {
        let mut now = Instant::now();
        let mut core = BridgeCore::new(vec![BRIDGE.parse().unwrap()]);
        let (b, _) = connect(&mut now, &mut core, 2);
        let mut bs = [b];
        // Delta frames before any keyframe are held back: a browser cannot start from them.
        core.handle_access_unit(now, room(), &au(1, false));
        core.handle_access_unit(now, room(), &au(2, true));
        core.handle_access_unit(now, room(), &au(3, false));
        run(&mut now, &mut core, &mut bs, |_, b| b[0].frames.len() >= 2);
        let got = &bs[0].frames;
        assert_eq!(
            got[0],
            au(2, true).data.to_vec(),
            "the keyframe arrives whole"
        );
        assert_eq!(got[1], au(3, false).data.to_vec());
        assert!(got.iter().all(|f| f.last() != Some(&1)));
    }

    #[test]
    fn a_connecting_browser_asks_for_a_keyframe() {
        let mut now = Instant::now();
        let mut core = BridgeCore::new(vec![BRIDGE.parse().unwrap()]);
        let (mut b, offer, pending) = Browser::offer(now, 2, |c| c);
        let (_, answer) = core.accept_offer(now, room(), &offer).unwrap();
        // Asked at the offer, and again at connection when nothing arrived meanwhile.
        assert_eq!(core.poll_output(), Some(CoreOutput::WantKeyframe(room())));
        b.answer(pending, &answer);
        let mut bs = [b];
        let mut ev = run(&mut now, &mut core, &mut bs, |c, _| {
            c.peers.iter().all(|p| p.connected)
        });
        ev.extend(std::iter::from_fn(|| core.poll_output()));
        assert!(ev.contains(&CoreOutput::WantKeyframe(room())));
    }

    #[test]
    fn a_browser_connecting_after_the_keyframe_starts_from_it() {
        let mut now = Instant::now();
        let mut core = BridgeCore::new(vec![BRIDGE.parse().unwrap()]);
        let (mut b, offer, pending) = Browser::offer(now, 2, |c| c);
        let (_, answer) = core.accept_offer(now, room(), &offer).unwrap();
        assert_eq!(core.poll_output(), Some(CoreOutput::WantKeyframe(room())));
        b.answer(pending, &answer);
        // The keyframe asked for at the offer arrives before ICE and DTLS are done.
        core.handle_access_unit(now, room(), &au(7, true));
        core.handle_access_unit(now, room(), &au(8, false));
        let mut bs = [b];
        let ev = run(&mut now, &mut core, &mut bs, |_, b| b[0].frames.len() >= 2);
        assert_eq!(bs[0].frames[0], au(7, true).data.to_vec());
        assert_eq!(bs[0].frames[1], au(8, false).data.to_vec());
        // Replayed, so no second keyframe is needed.
        assert!(!ev.contains(&CoreOutput::WantKeyframe(room())), "{ev:?}");
    }

    #[test]
    fn two_browsers_one_leaves_the_other_keeps_receiving() {
        let mut now = Instant::now();
        let mut core = BridgeCore::new(vec![BRIDGE.parse().unwrap()]);
        let (a, id_a) = connect(&mut now, &mut core, 2);
        let (b, _) = connect(&mut now, &mut core, 3);
        assert_eq!(core.viewers(room()), 2);
        let mut bs = [a, b];
        core.handle_access_unit(now, room(), &au(10, true));
        run(&mut now, &mut core, &mut bs, |_, b| {
            b.iter().all(|b| b.frames.len() == 1)
        });
        assert!(core.remove(room(), id_a));
        assert!(!core.remove(room(), id_a), "a second DELETE finds nothing");
        assert_eq!(core.viewers(room()), 1);
        core.handle_access_unit(now, room(), &au(11, false));
        run(&mut now, &mut core, &mut bs, |_, b| b[1].frames.len() == 2);
        assert_eq!(bs[0].frames.len(), 1);
    }

    #[test]
    fn ending_a_room_lets_its_viewers_go() {
        let mut now = Instant::now();
        let mut core = BridgeCore::new(vec![BRIDGE.parse().unwrap()]);
        let (_b, id) = connect(&mut now, &mut core, 2);
        while core.poll_output().is_some() {}
        core.end_room(room());
        assert_eq!(core.viewers(room()), 0);
        assert_eq!(
            core.poll_output(),
            Some(CoreOutput::Gone {
                peer: id,
                room: room()
            })
        );
    }

    #[test]
    fn an_offer_that_never_connects_is_dropped() {
        let mut now = Instant::now();
        let mut core = BridgeCore::new(vec![BRIDGE.parse().unwrap()]);
        let (_b, offer, _) = Browser::offer(now, 2, |c| c);
        let (id, _) = core.accept_offer(now, room(), &offer).unwrap();
        let t = core.poll_timeout().unwrap();
        assert!(t <= now + CONNECT_TIMEOUT);
        while core.viewers(room()) > 0 {
            now = core
                .poll_timeout()
                .unwrap()
                .max(now + Duration::from_millis(1));
            core.handle_timeout(now);
        }
        let mut outs = Vec::new();
        while let Some(o) = core.poll_output() {
            outs.push(o);
        }
        assert!(outs.contains(&CoreOutput::Gone {
            peer: id,
            room: room()
        }));
    }

    #[test]
    fn bad_offers_get_clear_errors() {
        let now = Instant::now();
        let mut core = BridgeCore::new(vec![BRIDGE.parse().unwrap()]);
        assert!(matches!(
            core.accept_offer(now, room(), "hello"),
            Err(OfferError::BadSdp(_))
        ));
        let (_b, vp8_only, _) = Browser::offer(now, 2, |c| c.clear_codecs().enable_vp8(true));
        assert_eq!(
            core.accept_offer(now, room(), &vp8_only),
            Err(OfferError::NoCodec)
        );
        assert_eq!(core.viewers(room()), 0);
        assert!(core.poll_output().is_none());
    }

    #[test]
    fn datagrams_for_nobody_are_refused() {
        let now = Instant::now();
        let mut core = BridgeCore::new(vec![BRIDGE.parse().unwrap()]);
        let from: SocketAddr = "198.51.100.9:1".parse().unwrap();
        assert!(!core.handle_receive(now, from, BRIDGE.parse().unwrap(), b"\x00\x01junk"));
        assert!(!core.handle_receive(now, from, BRIDGE.parse().unwrap(), &[]));
    }
}
