//! H.264 decoding with FFmpeg, one access unit in, one picture out, no frame delay.

use ffmpeg_next as ffmpeg;

use crate::picture::I420;

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("this FFmpeg has no H.264 decoder")]
    NoDecoder,
    #[error("cannot open the H.264 decoder: {0}")]
    Open(ffmpeg::Error),
    #[error("corrupt frame: {0}")]
    Corrupt(ffmpeg::Error),
}

pub struct Decoder {
    dec: ffmpeg::decoder::Video,
    frame: ffmpeg::frame::Video,
}

impl Decoder {
    pub fn new() -> Result<Self, DecodeError> {
        crate::media_init();
        let codec = ffmpeg::decoder::find(ffmpeg::codec::Id::H264).ok_or(DecodeError::NoDecoder)?;
        let mut ctx = ffmpeg::codec::context::Context::new_with_codec(codec);
        ctx.set_flags(ffmpeg::codec::Flags::LOW_DELAY);
        // Slice threads add no delay; frame threads would hold back one frame per thread.
        ctx.set_threading(ffmpeg::threading::Config {
            kind: ffmpeg::threading::Type::Slice,
            count: 2,
            ..Default::default()
        });
        let dec = ctx.decoder().video().map_err(DecodeError::Open)?;
        Ok(Self {
            dec,
            frame: ffmpeg::frame::Video::empty(),
        })
    }

    /// Decodes one access unit. `Ok(None)` when the decoder produced no picture for it.
    pub fn decode(&mut self, access_unit: &[u8]) -> Result<Option<I420>, DecodeError> {
        let packet = ffmpeg::Packet::copy(access_unit);
        self.dec
            .send_packet(&packet)
            .map_err(DecodeError::Corrupt)?;
        let mut out = None;
        loop {
            match self.dec.receive_frame(&mut self.frame) {
                Ok(()) => out = Some(to_i420(&self.frame)),
                Err(ffmpeg::Error::Other { errno }) if errno == libc::EAGAIN => break,
                Err(ffmpeg::Error::Eof) => break,
                Err(e) => return Err(DecodeError::Corrupt(e)),
            }
        }
        Ok(out)
    }
}

/// Copies a YUV420P frame's planes (with their strides) into an [`I420`].
pub fn to_i420(frame: &ffmpeg::frame::Video) -> I420 {
    let (w, h) = (frame.width(), frame.height());
    let (_, ch) = I420::chroma_size(w, h);
    let rows = [h as usize, ch as usize, ch as usize];
    let planes = [0, 1, 2].map(|i| {
        let stride = frame.stride(i);
        frame.data(i)[..stride * rows[i]].to_vec()
    });
    I420 {
        width: w,
        height: h,
        planes,
        strides: [frame.stride(0), frame.stride(1), frame.stride(2)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::testcard::{read_barcode, TestCard};
    use crate::encode::{Encoder, EncoderConfig};
    use crate::projection::{colour_distance, Face};

    /// A viewer moving between the sender's renditions gets an IDR of another size mid-stream.
    #[test]
    fn a_new_size_at_an_idr_decodes_at_once() {
        let mut dec = Decoder::new().unwrap();
        for (w, h, from) in [(640u32, 320u32, 0u64), (320, 160, 10), (640, 320, 20)] {
            let card = TestCard::new(w, h);
            let mut enc = Encoder::new(EncoderConfig {
                width: w,
                height: h,
                fps: 30,
                bitrate: 1_000_000,
                threads: 1,
            })
            .unwrap();
            for seq in from..from + 10 {
                let f = enc
                    .encode(&card.frame(seq, 0), seq, 0, false)
                    .unwrap()
                    .unwrap();
                let pic = dec
                    .decode(&f.data)
                    .unwrap()
                    .expect("a picture for every frame");
                assert_eq!((pic.width, pic.height), (w, h));
                assert_eq!(read_barcode(&pic), Some(seq as u32));
            }
        }
    }

    #[test]
    fn testcard_survives_the_codec() {
        let card = TestCard::new(640, 320);
        let mut enc = Encoder::new(EncoderConfig {
            width: 640,
            height: 320,
            fps: 30,
            bitrate: 2_000_000,
            threads: 2,
        })
        .unwrap();
        let mut dec = Decoder::new().unwrap();
        for n in 0..60u64 {
            let f = enc
                .encode(&card.frame(n, n * 33), n, 0, false)
                .unwrap()
                .unwrap();
            let pic = dec
                .decode(&f.data)
                .unwrap()
                .expect("one picture per access unit");
            assert_eq!(read_barcode(&pic), Some(n as u32), "frame {n}");
            if n == 59 {
                // Equator at the front face centre.
                let rgb = pic.rgb_at(320, 160);
                assert!(colour_distance(rgb, Face::Front.colour()) < 40, "{rgb:?}");
            }
        }
    }

    /// The bitrate floor (150 kbit/s) keeps the test card's barcode readable at 640x320 (at
    /// 100 kbit/s x264 blurs it away at forced IDRs): lab tests at the floor can check frames.
    #[test]
    fn at_the_bitrate_floor_every_barcode_reads() {
        let card = TestCard::new(640, 320);
        let mut enc = Encoder::new(EncoderConfig {
            width: 640,
            height: 320,
            fps: 30,
            bitrate: 2_000_000,
            // One thread: x264 is then deterministic.
            threads: 1,
        })
        .unwrap();
        let mut dec = Decoder::new().unwrap();
        for n in 0..150u64 {
            // A path collapsing to the floor (a link cut), keyframes asked for now and then.
            if n == 30 {
                enc.set_bitrate(150_000);
            }
            let f = enc
                .encode(&card.frame(n, n * 33), n, 0, n % 20 == 5)
                .unwrap()
                .unwrap();
            let pic = dec.decode(&f.data).unwrap().expect("one picture");
            assert_eq!(read_barcode(&pic), Some(n as u32), "frame {n}");
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut dec = Decoder::new().unwrap();
        for bytes in [&[0u8, 0, 1, 0x65, 0xff, 0x00][..], &[1, 2, 3], &[]] {
            let _ = dec.decode(bytes);
        }
    }
}
