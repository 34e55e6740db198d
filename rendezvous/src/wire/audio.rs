//! Audio between peers: one Opus packet per QUIC datagram (unreliable: a late packet is
//! worth nothing, and audio must never wait behind a video frame's stream).
//!
//! ```text
//! u8  magic 0xA5      u8 version      u8 direction (0 program, 1 talkback)
//! u8  frame_ms (10 | 20)              u64 seq        u64 capture_us (the video's media clock)
//! ..  Opus packet (1..=MAX_OPUS_LEN bytes)
//! ```

use super::codec::{Reader, WireError, Writer};

const MAGIC: u8 = 0xA5;
pub const AUDIO_VERSION: u8 = 1;
/// An Opus packet that fits one datagram on a 1200-byte path with room for QUIC's own header.
pub const MAX_OPUS_LEN: usize = 1100;
pub const HEADER_LEN: usize = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The camera PC's sound to viewers.
    Program = 0,
    /// A viewer's microphone to the camera PC.
    Talkback = 1,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioPacket {
    pub direction: Direction,
    pub frame_ms: u8,
    pub seq: u64,
    /// Capture time of the packet's first sample, µs on the sender's clock (the same clock as
    /// video frames' `capture_us`, so the viewer can hold video against the audio).
    pub capture_us: u64,
    pub opus: Vec<u8>,
}

impl AudioPacket {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u8(MAGIC);
        w.u8(AUDIO_VERSION);
        w.u8(self.direction as u8);
        w.u8(self.frame_ms);
        w.u64(self.seq);
        w.u64(self.capture_us);
        w.bytes(&self.opus);
        w.buf
    }

    pub fn decode(buf: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(buf);
        if r.u8()? != MAGIC {
            return Err(WireError::BadMagic);
        }
        let v = r.u8()?;
        if v != AUDIO_VERSION {
            return Err(WireError::Version(v));
        }
        let direction = match r.u8()? {
            0 => Direction::Program,
            1 => Direction::Talkback,
            _ => return Err(WireError::Invalid("audio direction")),
        };
        let frame_ms = r.u8()?;
        if !matches!(frame_ms, 10 | 20) {
            return Err(WireError::Invalid("audio frame length"));
        }
        let seq = r.u64()?;
        let capture_us = r.u64()?;
        let opus = r.bytes(buf.len() - HEADER_LEN)?;
        if opus.is_empty() {
            return Err(WireError::Truncated);
        }
        if opus.len() > MAX_OPUS_LEN {
            return Err(WireError::TooLong(opus.len()));
        }
        Ok(Self {
            direction,
            frame_ms,
            seq,
            capture_us,
            opus: opus.to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn header_is_twenty_bytes_and_round_trips() {
        let p = AudioPacket {
            direction: Direction::Talkback,
            frame_ms: 20,
            seq: 7,
            capture_us: 123_456,
            opus: vec![0xfc, 1, 2],
        };
        let b = p.encode();
        assert_eq!(b.len(), HEADER_LEN + 3);
        assert_eq!(AudioPacket::decode(&b), Ok(p));
    }

    #[test]
    fn bad_packets_are_errors() {
        let good = AudioPacket {
            direction: Direction::Program,
            frame_ms: 10,
            seq: 1,
            capture_us: 2,
            opus: vec![9; 40],
        }
        .encode();
        assert_eq!(
            AudioPacket::decode(&good[..HEADER_LEN]),
            Err(WireError::Truncated)
        );
        assert_eq!(AudioPacket::decode(&good[..5]), Err(WireError::Truncated));
        let mut b = good.clone();
        b[0] = 0x40;
        assert_eq!(AudioPacket::decode(&b), Err(WireError::BadMagic));
        let mut b = good.clone();
        b[3] = 15;
        assert!(AudioPacket::decode(&b).is_err());
        let mut b = good.clone();
        b.extend(std::iter::repeat_n(0, MAX_OPUS_LEN));
        assert!(matches!(
            AudioPacket::decode(&b),
            Err(WireError::TooLong(_))
        ));
    }

    proptest! {
        #[test]
        fn any_bytes_decode_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..1400)) {
            let _ = AudioPacket::decode(&bytes);
        }

        #[test]
        fn any_packet_round_trips(seq in any::<u64>(), at in any::<u64>(), talk in any::<bool>(),
                                  opus in proptest::collection::vec(any::<u8>(), 1..MAX_OPUS_LEN)) {
            let p = AudioPacket {
                direction: if talk { Direction::Talkback } else { Direction::Program },
                frame_ms: 20,
                seq,
                capture_us: at,
                opus,
            };
            prop_assert_eq!(AudioPacket::decode(&p.encode()), Ok(p));
        }
    }
}
