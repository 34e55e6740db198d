//! Opus at 48 kHz in 10 or 20 ms frames, through libopus itself (the `opus` crate): FFmpeg's
//! wrappers decode packets but expose neither packet-loss concealment nor decoding a lost
//! frame from the next packet's in-band FEC, which the jitter buffer relies on.

pub const SAMPLE_RATE: u32 = 48_000;

#[derive(Debug, thiserror::Error)]
pub enum OpusError {
    #[error("Opus: {0}")]
    Codec(#[from] ::opus::Error),
    #[error("Opus frames are 10 or 20 ms, not {0} ms")]
    FrameLength(u32),
    #[error("Opus takes 1 or 2 channels, not {0}")]
    Channels(u16),
    #[error("a frame is {want} samples per channel, got {got}")]
    FrameSize { want: usize, got: usize },
}

#[derive(Debug, Clone, Copy)]
pub struct OpusConfig {
    pub channels: u16,
    pub frame_ms: u32,
    pub bitrate: i32,
    /// Expected packet loss (%): the encoder spends that much on in-band FEC.
    pub expected_loss_pct: i32,
}

impl Default for OpusConfig {
    fn default() -> Self {
        Self {
            channels: 1,
            frame_ms: 20,
            bitrate: 96_000,
            expected_loss_pct: 10,
        }
    }
}

impl OpusConfig {
    /// Samples per channel in one frame.
    pub fn frame_samples(&self) -> usize {
        (SAMPLE_RATE / 1000 * self.frame_ms) as usize
    }

    fn checked(self) -> Result<(Self, ::opus::Channels), OpusError> {
        if !matches!(self.frame_ms, 10 | 20) {
            return Err(OpusError::FrameLength(self.frame_ms));
        }
        let ch = match self.channels {
            1 => ::opus::Channels::Mono,
            2 => ::opus::Channels::Stereo,
            n => return Err(OpusError::Channels(n)),
        };
        Ok((self, ch))
    }
}

pub struct OpusEncoder {
    enc: ::opus::Encoder,
    cfg: OpusConfig,
    out: Vec<u8>,
}

impl OpusEncoder {
    pub fn new(cfg: OpusConfig) -> Result<Self, OpusError> {
        let (cfg, ch) = cfg.checked()?;
        let mut enc = ::opus::Encoder::new(SAMPLE_RATE, ch, ::opus::Application::Audio)?;
        enc.set_bitrate(::opus::Bitrate::Bits(cfg.bitrate))?;
        enc.set_inband_fec(true)?;
        enc.set_packet_loss_perc(cfg.expected_loss_pct)?;
        Ok(Self {
            enc,
            cfg,
            out: vec![0; crate::rendezvous::wire::audio::MAX_OPUS_LEN],
        })
    }

    /// One frame of interleaved samples in [-1, 1] to one packet.
    pub fn encode(&mut self, pcm: &[f32]) -> Result<Vec<u8>, OpusError> {
        let want = self.cfg.frame_samples();
        let got = pcm.len() / self.cfg.channels as usize;
        if got != want || pcm.len() % self.cfg.channels as usize != 0 {
            return Err(OpusError::FrameSize { want, got });
        }
        let n = self.enc.encode_float(pcm, &mut self.out)?;
        Ok(self.out[..n].to_vec())
    }
}

pub struct OpusDecoder {
    dec: ::opus::Decoder,
    cfg: OpusConfig,
}

impl OpusDecoder {
    pub fn new(cfg: OpusConfig) -> Result<Self, OpusError> {
        let (cfg, ch) = cfg.checked()?;
        Ok(Self {
            dec: ::opus::Decoder::new(SAMPLE_RATE, ch)?,
            cfg,
        })
    }

    fn frame(&self) -> Vec<f32> {
        vec![0.0; self.cfg.frame_samples() * self.cfg.channels as usize]
    }

    /// One packet to one frame of interleaved samples. A corrupt packet is an error; the caller
    /// conceals instead.
    pub fn decode(&mut self, packet: &[u8]) -> Result<Vec<f32>, OpusError> {
        let mut out = self.frame();
        let n = self.dec.decode_float(packet, &mut out, false)?;
        out.truncate(n * self.cfg.channels as usize);
        Ok(out)
    }

    /// The frame before `next`, from `next`'s in-band FEC (concealment if it carries none).
    pub fn decode_fec(&mut self, next: &[u8]) -> Result<Vec<f32>, OpusError> {
        let mut out = self.frame();
        let n = self.dec.decode_float(next, &mut out, true)?;
        out.truncate(n * self.cfg.channels as usize);
        Ok(out)
    }

    /// A frame for a lost packet, continued from what came before (libopus's PLC).
    pub fn conceal(&mut self) -> Result<Vec<f32>, OpusError> {
        let mut out = self.frame();
        let n = self.dec.decode_float(&[], &mut out, false)?;
        out.truncate(n * self.cfg.channels as usize);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(n: usize, at: usize, hz: f32, amp: f32) -> Vec<f32> {
        (at..at + n)
            .map(|i| amp * (2.0 * std::f32::consts::PI * hz * i as f32 / SAMPLE_RATE as f32).sin())
            .collect()
    }

    fn rms(x: &[f32]) -> f32 {
        (x.iter().map(|v| v * v).sum::<f32>() / x.len().max(1) as f32).sqrt()
    }

    /// Frequency from upward zero crossings (interpolated), over the whole signal.
    fn frequency(x: &[f32]) -> f32 {
        let ups: Vec<f32> = x
            .windows(2)
            .enumerate()
            .filter(|(_, w)| w[0] < 0.0 && w[1] >= 0.0)
            .map(|(i, w)| i as f32 + w[0] / (w[0] - w[1]))
            .collect();
        let span = ups.last().unwrap() - ups.first().unwrap();
        (ups.len() - 1) as f32 * SAMPLE_RATE as f32 / span
    }

    fn run(drop: impl Fn(usize) -> bool, fec: bool) -> Vec<f32> {
        let cfg = OpusConfig::default();
        let (mut enc, mut dec) = (
            OpusEncoder::new(cfg).unwrap(),
            OpusDecoder::new(cfg).unwrap(),
        );
        let n = cfg.frame_samples();
        let packets: Vec<Vec<u8>> = (0..100)
            .map(|k| enc.encode(&tone(n, k * n, 1000.0, 0.5)).unwrap())
            .collect();
        let mut out = Vec::new();
        for k in 0..100 {
            let frame = if !drop(k) {
                dec.decode(&packets[k]).unwrap()
            } else if fec && k + 1 < 100 {
                dec.decode_fec(&packets[k + 1]).unwrap()
            } else {
                dec.conceal().unwrap()
            };
            assert_eq!(frame.len(), n, "frame {k}");
            out.extend(frame);
        }
        out
    }

    #[test]
    fn a_tone_keeps_its_frequency_and_level() {
        let out = run(|_| false, false);
        // Past the codec's start-up (a few ms).
        let steady = &out[4800..];
        let f = frequency(steady);
        assert!((f - 1000.0).abs() <= 2.0, "{f} Hz");
        let level_db = 20.0 * (rms(steady) / (0.5 / 2f32.sqrt())).log10();
        assert!(level_db.abs() <= 3.0, "{level_db} dB");
    }

    #[test]
    fn lost_frames_are_concealed_not_silent() {
        let n = OpusConfig::default().frame_samples();
        for fec in [false, true] {
            let out = run(|k| k % 10 == 5, fec);
            for k in (5..100).step_by(10) {
                let frame = &out[k * n..(k + 1) * n];
                // Near the tone's level: no gap a listener hears as a drop-out.
                assert!(rms(frame) > 0.1, "frame {k} (fec {fec}) rms {}", rms(frame));
            }
        }
    }

    #[test]
    fn bad_input_is_an_error() {
        let cfg = OpusConfig::default();
        let mut enc = OpusEncoder::new(cfg).unwrap();
        assert!(matches!(
            enc.encode(&[0.0; 100]),
            Err(OpusError::FrameSize { .. })
        ));
        assert!(OpusEncoder::new(OpusConfig {
            frame_ms: 15,
            ..cfg
        })
        .is_err());
        assert!(OpusEncoder::new(OpusConfig { channels: 3, ..cfg }).is_err());
        let mut dec = OpusDecoder::new(cfg).unwrap();
        // Garbage from the network: an error or a frame, never a panic.
        for bytes in [&[0xffu8; 3][..], &[0x00], &[0xfc, 0xff, 0xff, 0xff]] {
            let _ = dec.decode(bytes);
        }
    }
}
