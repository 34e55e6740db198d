//! Media between peers, inside QUIC.
//!
//! * One bidirectional **control stream**, opened by the viewer: [`Control`] messages, each
//!   framed as `u16 length, body`.
//! * One unidirectional stream **per video frame**, opened by the sender: a [`FrameHeader`]
//!   followed by `payload_len` bytes of H.264 Annex-B. A lost packet delays only its own frame.

use super::codec::{Reader, WireError, Writer};

/// 2: viewers report frame arrivals (`Control::Arrivals`) for the sender's rate control.
pub const MEDIA_VERSION: u8 = 5;
/// ALPN for peer-to-peer media connections.
pub const ALPN: &[u8] = b"inclubit/1";
/// Largest control message body.
pub const MAX_CONTROL_LEN: usize = 4096;
/// Largest encoded frame accepted (a 4K keyframe at a high bitrate stays well below).
pub const MAX_FRAME_LEN: usize = 16 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// H.264 Annex-B, Constrained Baseline or Main profile (browsers decode it untouched).
    H264 = 1,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Projection {
    #[default]
    EquirectMono = 0,
    /// Left eye on top, right eye below.
    EquirectStereoTopBottom = 1,
    /// Two circular fisheye images side by side (front, back).
    DualFisheye = 2,
}

impl Codec {
    fn from_u8(v: u8) -> Result<Self, WireError> {
        match v {
            1 => Ok(Self::H264),
            _ => Err(WireError::Invalid("codec")),
        }
    }
}

impl Projection {
    fn from_u8(v: u8) -> Result<Self, WireError> {
        Ok(match v {
            0 => Self::EquirectMono,
            1 => Self::EquirectStereoTopBottom,
            2 => Self::DualFisheye,
            _ => return Err(WireError::Invalid("projection")),
        })
    }
}

/// Precedes every frame on its own stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub seq: u64,
    /// Capture time, microseconds on the sender's clock (see [`Control::Pong`] for the offset).
    pub capture_us: u64,
    /// An IDR: decoding may start here.
    pub keyframe: bool,
    /// SPS/PPS are in the payload.
    pub has_config: bool,
    pub codec: Codec,
    pub projection: Projection,
    pub width: u16,
    pub height: u16,
    pub payload_len: u32,
}

const F_KEY: u8 = 1;
const F_CONFIG: u8 = 2;

impl FrameHeader {
    pub const LEN: usize = 28;

    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut w = Writer::default();
        w.u8(MEDIA_VERSION);
        w.u8(if self.keyframe { F_KEY } else { 0 } | if self.has_config { F_CONFIG } else { 0 });
        w.u8(self.codec as u8);
        w.u8(self.projection as u8);
        w.u64(self.seq);
        w.u64(self.capture_us);
        w.u16(self.width);
        w.u16(self.height);
        w.u32(self.payload_len);
        let mut out = [0u8; Self::LEN];
        out.copy_from_slice(&w.buf);
        out
    }

    pub fn decode(buf: &[u8; Self::LEN]) -> Result<Self, WireError> {
        let mut r = Reader::new(buf);
        let v = r.u8()?;
        if v != MEDIA_VERSION {
            return Err(WireError::Version(v));
        }
        let flags = r.u8()?;
        if flags & !(F_KEY | F_CONFIG) != 0 {
            return Err(WireError::Invalid("frame flags"));
        }
        let h = Self {
            keyframe: flags & F_KEY != 0,
            has_config: flags & F_CONFIG != 0,
            codec: Codec::from_u8(r.u8()?)?,
            projection: Projection::from_u8(r.u8()?)?,
            seq: r.u64()?,
            capture_us: r.u64()?,
            width: r.u16()?,
            height: r.u16()?,
            payload_len: r.u32()?,
        };
        if h.payload_len as usize > MAX_FRAME_LEN {
            return Err(WireError::TooLong(h.payload_len as usize));
        }
        r.finish()?;
        Ok(h)
    }
}

/// A dual-fisheye camera's lens, in integers on the wire. Both circles share it: each sits in
/// its half of the picture (front lens left, back lens right).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lens {
    /// Field of view of one lens, centidegrees (19500: 195°, typical of consumer 360 cameras).
    pub fov_cdeg: u16,
    /// Circle centre within its half, in 1/10000 of the half's width and the picture's height.
    pub centre_e4: [u16; 2],
    /// Circle radius in 1/10000 of the picture's height.
    pub radius_e4: u16,
}

impl Default for Lens {
    fn default() -> Self {
        Self {
            fov_cdeg: 19500,
            centre_e4: [5000, 5000],
            radius_e4: 5000,
        }
    }
}

/// What the sender says first on the control stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamHello {
    pub codec: Codec,
    pub width: u16,
    pub height: u16,
    /// Frames per second × 1000.
    pub fps_milli: u32,
    pub projection: Projection,
    pub bitrate: u32,
    /// Orientation correction in centidegrees (yaw, pitch, roll).
    pub orientation_cdeg: [i16; 3],
    /// Lens geometry for [`Projection::DualFisheye`] (ignored otherwise).
    pub lens: Lens,
    /// The frame sequence number the stream starts near.
    pub next_seq: u64,
}

/// Counters a viewer reports back so the sender's stats line shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ViewerStats {
    pub frames_shown: u64,
    pub frames_dropped: u64,
    pub latency_p50_us: u32,
    pub latency_p99_us: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// Viewer → sender, first message. `pake`: the viewer's SPAKE2 message (`peer::pairing`).
    ViewerHello {
        name: String,
        prefer: Preference,
        pake: Vec<u8>,
    },
    /// Sender → viewer: its SPAKE2 message and its confirmation of the key for this session.
    Pairing { pake: Vec<u8>, confirm: [u8; 32] },
    /// Viewer → sender: the viewer's confirmation; the sender says `Hello` only after it.
    PairConfirm { confirm: [u8; 32] },
    /// Sender → viewers: failed pairings made it draw a new secret; the old code no longer
    /// pairs (a bridge then proves each new browser's code before serving it).
    Rekeyed,
    /// Sender → viewer, answer to the hello.
    Hello(StreamHello),
    /// Viewer → sender: decoding cannot go on until an IDR. `seen`: the newest frame the viewer
    /// has heard of (arrived or skipped); a keyframe the sender sent after it already answers
    /// the request, so a request that crossed that keyframe on the way changes nothing.
    KeyframeRequest { seen: u64 },
    /// Sender → viewer: this frame will never arrive (too old, or the viewer fell behind).
    Skipped { seq: u64 },
    /// Viewer → sender: clock probe, viewer time in µs.
    Ping { viewer_us: u64 },
    /// Sender → viewer: echo with the sender's clock, for the capture-time offset.
    Pong { viewer_us: u64, sender_us: u64 },
    /// Viewer → sender.
    Stats(ViewerStats),
    /// Viewer → sender, a few times a second: when each frame's last byte arrived (viewer
    /// clock). The sender's bandwidth estimate reads the queue on the path from their spacing.
    Arrivals(Vec<FrameArrival>),
    /// Viewer → sender: what this viewer wants, in place of the sender's own choice. The
    /// browser bridge sends it for each upstream: one rendition for the browsers on it, at no
    /// more than they carry.
    Prefer(Preference),
}

/// A viewer's wishes for its stream. The sender still never exceeds its own estimate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Preference {
    /// The rendition (0 full size, 1 half size), or `None` for the sender to choose.
    pub rendition: Option<u8>,
    /// Bits per second at most; 0 for no limit.
    pub max_bitrate: u64,
}

/// One frame fully received by a viewer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameArrival {
    pub seq: u64,
    pub received_us: u64,
}

impl FrameArrival {
    /// At most this many in one [`Control::Arrivals`] (it stays well under `MAX_CONTROL_LEN`).
    pub const MAX_PER_MESSAGE: usize = 128;
}

const C_VIEWER_HELLO: u8 = 1;
const C_HELLO: u8 = 2;
const C_KEYFRAME: u8 = 3;
const C_SKIPPED: u8 = 4;
const C_PING: u8 = 5;
const C_PONG: u8 = 6;
const C_STATS: u8 = 7;
const C_ARRIVALS: u8 = 8;
const C_PREFER: u8 = 9;
const C_PAIRING: u8 = 10;
const C_PAIR_CONFIRM: u8 = 11;
const C_REKEYED: u8 = 12;
/// `Preference::rendition` of `None` on the wire.
const AUTO: u8 = u8::MAX;

impl Preference {
    fn write(&self, w: &mut Writer) {
        w.u8(self.rendition.unwrap_or(AUTO));
        w.u64(self.max_bitrate);
    }

    fn read(r: &mut Reader) -> Result<Self, WireError> {
        Ok(Self {
            rendition: Some(r.u8()?).filter(|v| *v != AUTO),
            max_bitrate: r.u64()?,
        })
    }
}

impl Control {
    /// Body only; [`Control::frame`] adds the length prefix.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u8(MEDIA_VERSION);
        match self {
            Self::ViewerHello { name, prefer, pake } => {
                w.u8(C_VIEWER_HELLO);
                w.short_str(name);
                prefer.write(&mut w);
                w.short_bytes(pake);
            }
            Self::Pairing { pake, confirm } => {
                w.u8(C_PAIRING);
                w.short_bytes(pake);
                w.bytes(confirm);
            }
            Self::PairConfirm { confirm } => {
                w.u8(C_PAIR_CONFIRM);
                w.bytes(confirm);
            }
            Self::Rekeyed => w.u8(C_REKEYED),
            Self::Hello(h) => {
                w.u8(C_HELLO);
                w.u8(h.codec as u8);
                w.u16(h.width);
                w.u16(h.height);
                w.u32(h.fps_milli);
                w.u8(h.projection as u8);
                w.u32(h.bitrate);
                for v in h.orientation_cdeg {
                    w.i16(v);
                }
                w.u64(h.next_seq);
                w.u16(h.lens.fov_cdeg);
                w.u16(h.lens.centre_e4[0]);
                w.u16(h.lens.centre_e4[1]);
                w.u16(h.lens.radius_e4);
            }
            Self::KeyframeRequest { seen } => {
                w.u8(C_KEYFRAME);
                w.u64(*seen);
            }
            Self::Skipped { seq } => {
                w.u8(C_SKIPPED);
                w.u64(*seq);
            }
            Self::Ping { viewer_us } => {
                w.u8(C_PING);
                w.u64(*viewer_us);
            }
            Self::Pong {
                viewer_us,
                sender_us,
            } => {
                w.u8(C_PONG);
                w.u64(*viewer_us);
                w.u64(*sender_us);
            }
            Self::Stats(s) => {
                w.u8(C_STATS);
                w.u64(s.frames_shown);
                w.u64(s.frames_dropped);
                w.u32(s.latency_p50_us);
                w.u32(s.latency_p99_us);
            }
            Self::Arrivals(list) => {
                w.u8(C_ARRIVALS);
                let list = &list[..list.len().min(FrameArrival::MAX_PER_MESSAGE)];
                w.u8(list.len() as u8);
                for a in list {
                    w.u64(a.seq);
                    w.u64(a.received_us);
                }
            }
            Self::Prefer(p) => {
                w.u8(C_PREFER);
                p.write(&mut w);
            }
        }
        w.buf
    }

    /// Length-prefixed, ready to write on the control stream.
    pub fn frame(&self) -> Vec<u8> {
        let body = self.encode();
        let mut out = Vec::with_capacity(body.len() + 2);
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    pub fn decode(buf: &[u8]) -> Result<Self, WireError> {
        if buf.len() > MAX_CONTROL_LEN {
            return Err(WireError::TooLong(buf.len()));
        }
        let mut r = Reader::new(buf);
        let v = r.u8()?;
        if v != MEDIA_VERSION {
            return Err(WireError::Version(v));
        }
        let msg = match r.u8()? {
            C_VIEWER_HELLO => Self::ViewerHello {
                name: r.short_str()?.to_string(),
                prefer: Preference::read(&mut r)?,
                pake: r.short_bytes()?.to_vec(),
            },
            C_PAIRING => Self::Pairing {
                pake: r.short_bytes()?.to_vec(),
                confirm: r.array()?,
            },
            C_PAIR_CONFIRM => Self::PairConfirm {
                confirm: r.array()?,
            },
            C_REKEYED => Self::Rekeyed,
            C_HELLO => Self::Hello(StreamHello {
                codec: Codec::from_u8(r.u8()?)?,
                width: r.u16()?,
                height: r.u16()?,
                fps_milli: r.u32()?,
                projection: Projection::from_u8(r.u8()?)?,
                bitrate: r.u32()?,
                orientation_cdeg: [r.i16()?, r.i16()?, r.i16()?],
                next_seq: r.u64()?,
                lens: Lens {
                    fov_cdeg: r.u16()?,
                    centre_e4: [r.u16()?, r.u16()?],
                    radius_e4: r.u16()?,
                },
            }),
            C_KEYFRAME => Self::KeyframeRequest { seen: r.u64()? },
            C_SKIPPED => Self::Skipped { seq: r.u64()? },
            C_PING => Self::Ping {
                viewer_us: r.u64()?,
            },
            C_PONG => Self::Pong {
                viewer_us: r.u64()?,
                sender_us: r.u64()?,
            },
            C_STATS => Self::Stats(ViewerStats {
                frames_shown: r.u64()?,
                frames_dropped: r.u64()?,
                latency_p50_us: r.u32()?,
                latency_p99_us: r.u32()?,
            }),
            C_ARRIVALS => {
                let n = r.u8()? as usize;
                let mut list = Vec::with_capacity(n.min(FrameArrival::MAX_PER_MESSAGE));
                for _ in 0..n {
                    list.push(FrameArrival {
                        seq: r.u64()?,
                        received_us: r.u64()?,
                    });
                }
                Self::Arrivals(list)
            }
            C_PREFER => Self::Prefer(Preference::read(&mut r)?),
            t => return Err(WireError::UnknownType(t)),
        };
        r.finish()?;
        Ok(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn projection() -> impl Strategy<Value = Projection> {
        (0u8..3).prop_map(|v| Projection::from_u8(v).unwrap())
    }

    fn preference() -> impl Strategy<Value = Preference> {
        (proptest::option::of(0u8..8), any::<u64>()).prop_map(|(rendition, max_bitrate)| {
            Preference {
                rendition,
                max_bitrate,
            }
        })
    }

    fn header() -> impl Strategy<Value = FrameHeader> {
        (
            any::<u64>(),
            any::<u64>(),
            any::<bool>(),
            any::<bool>(),
            projection(),
            any::<u16>(),
            any::<u16>(),
            0..=MAX_FRAME_LEN as u32,
        )
            .prop_map(
                |(seq, capture_us, keyframe, has_config, projection, width, height, len)| {
                    FrameHeader {
                        seq,
                        capture_us,
                        keyframe,
                        has_config,
                        codec: Codec::H264,
                        projection,
                        width,
                        height,
                        payload_len: len,
                    }
                },
            )
    }

    fn control() -> impl Strategy<Value = Control> {
        prop_oneof![
            (
                "[a-z]{0,40}",
                preference(),
                proptest::collection::vec(any::<u8>(), 0..=40)
            )
                .prop_map(|(name, prefer, pake)| Control::ViewerHello {
                    name,
                    prefer,
                    pake
                }),
            (
                proptest::collection::vec(any::<u8>(), 0..=40),
                any::<[u8; 32]>()
            )
                .prop_map(|(pake, confirm)| Control::Pairing { pake, confirm }),
            any::<[u8; 32]>().prop_map(|confirm| Control::PairConfirm { confirm }),
            Just(Control::Rekeyed),
            (
                any::<u16>(),
                any::<u16>(),
                any::<u32>(),
                projection(),
                any::<u32>(),
                any::<[i16; 3]>(),
                any::<u64>(),
                any::<[u16; 4]>()
            )
                .prop_map(
                    |(width, height, fps_milli, projection, bitrate, o, next_seq, l)| {
                        Control::Hello(StreamHello {
                            codec: Codec::H264,
                            width,
                            height,
                            fps_milli,
                            projection,
                            bitrate,
                            orientation_cdeg: o,
                            next_seq,
                            lens: Lens {
                                fov_cdeg: l[0],
                                centre_e4: [l[1], l[2]],
                                radius_e4: l[3],
                            },
                        })
                    }
                ),
            any::<u64>().prop_map(|seen| Control::KeyframeRequest { seen }),
            any::<u64>().prop_map(|seq| Control::Skipped { seq }),
            any::<u64>().prop_map(|viewer_us| Control::Ping { viewer_us }),
            (any::<u64>(), any::<u64>()).prop_map(|(viewer_us, sender_us)| Control::Pong {
                viewer_us,
                sender_us
            }),
            (any::<u64>(), any::<u64>(), any::<u32>(), any::<u32>()).prop_map(|(a, b, c, d)| {
                Control::Stats(ViewerStats {
                    frames_shown: a,
                    frames_dropped: b,
                    latency_p50_us: c,
                    latency_p99_us: d,
                })
            }),
            proptest::collection::vec(
                (any::<u64>(), any::<u64>()),
                0..=FrameArrival::MAX_PER_MESSAGE
            )
            .prop_map(|v| Control::Arrivals(
                v.into_iter()
                    .map(|(seq, received_us)| FrameArrival { seq, received_us })
                    .collect()
            )),
            preference().prop_map(Control::Prefer),
        ]
    }

    proptest! {
        #[test]
        fn header_roundtrip(h in header()) {
            prop_assert_eq!(FrameHeader::decode(&h.encode()).unwrap(), h);
        }

        #[test]
        fn control_roundtrip(c in control()) {
            let framed = c.frame();
            let len = u16::from_be_bytes([framed[0], framed[1]]) as usize;
            prop_assert_eq!(len, framed.len() - 2);
            prop_assert_eq!(Control::decode(&framed[2..]).unwrap(), c);
        }

        #[test]
        fn random_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200), h in any::<[u8; 28]>()) {
            let _ = Control::decode(&bytes);
            let _ = FrameHeader::decode(&h);
        }
    }

    #[test]
    fn oversized_frame_rejected() {
        let mut h = FrameHeader {
            seq: 1,
            capture_us: 2,
            keyframe: true,
            has_config: true,
            codec: Codec::H264,
            projection: Projection::EquirectMono,
            width: 640,
            height: 320,
            payload_len: 10,
        };
        h.payload_len = MAX_FRAME_LEN as u32 + 1;
        assert_eq!(
            FrameHeader::decode(&h.encode()),
            Err(WireError::TooLong(MAX_FRAME_LEN + 1))
        );
    }
}
