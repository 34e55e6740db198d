//! Files and V4L2 cameras through FFmpeg: demux, decode, scale to I420 at the requested size.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ffmpeg::format::Pixel;
use ffmpeg::software::scaling;
use ffmpeg_next as ffmpeg;

use super::{pace, CaptureConfig, CaptureError, CapturedFrame, FrameSource};
use crate::clock;
use crate::picture::I420;

/// The swscale context, owned by one source.
struct Scaler(scaling::Context);
// SAFETY: a scaling context has no thread affinity; it is only ever used through `&mut` by the
// one thread that owns the source (the capture thread the source is moved to).
unsafe impl Send for Scaler {}

pub struct FfmpegSource {
    input: ffmpeg::format::context::Input,
    stream: usize,
    decoder: ffmpeg::decoder::Video,
    scaler: Option<(Scaler, Pixel, u32, u32)>,
    size: (u32, u32),
    fps: f64,
    /// Files loop and are paced; cameras deliver at their own rate.
    file: bool,
    path: PathBuf,
    start: Instant,
    tick: u64,
    draining: bool,
}

fn file_err(path: &Path, e: impl ToString) -> CaptureError {
    CaptureError::File {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

fn camera_err(path: &Path, e: ffmpeg::Error) -> CaptureError {
    match e {
        ffmpeg::Error::Other { errno } if errno == libc::ENOENT || errno == libc::ENODEV => {
            CaptureError::NoCamera(path.to_path_buf())
        }
        ffmpeg::Error::Other { errno } if errno == libc::EBUSY => {
            CaptureError::CameraBusy(path.to_path_buf())
        }
        ffmpeg::Error::Other { errno } if errno == libc::EACCES || errno == libc::EPERM => {
            CaptureError::CameraDenied(path.to_path_buf())
        }
        e => CaptureError::Camera {
            path: path.to_path_buf(),
            reason: e.to_string(),
        },
    }
}

impl FfmpegSource {
    pub fn file(path: &Path, cfg: &CaptureConfig) -> Result<Self, CaptureError> {
        if !path.is_file() {
            return Err(CaptureError::NoFile(path.to_path_buf()));
        }
        crate::media_init();
        let input = ffmpeg::format::input(path).map_err(|e| file_err(path, e))?;
        Self::from_input(input, path, cfg, true).map_err(|e| match e {
            CaptureError::Other(reason) => file_err(path, reason),
            e => e,
        })
    }

    pub fn camera(path: &Path, cfg: &CaptureConfig) -> Result<Self, CaptureError> {
        // FFmpeg's v4l2 error for a missing node is a generic one: check first.
        if !path.exists() {
            return Err(CaptureError::NoCamera(path.to_path_buf()));
        }
        crate::media_init();
        let format = || {
            ffmpeg::device::input::video()
                .find(|f| {
                    f.name()
                        .split(',')
                        .any(|n| n == "v4l2" || n == "video4linux2")
                })
                .ok_or_else(|| CaptureError::Camera {
                    path: path.to_path_buf(),
                    reason: "this FFmpeg has no v4l2 input".into(),
                })
        };
        let mut opts = ffmpeg::Dictionary::new();
        if let Some((w, h)) = cfg.size {
            opts.set("video_size", &format!("{w}x{h}"));
        }
        opts.set("framerate", &format!("{}", cfg.fps));
        if cfg.mjpeg {
            opts.set("input_format", "mjpeg");
        }
        let ctx = match ffmpeg::format::open_with(path, &format()?, opts) {
            Ok(c) => c,
            // The camera may not offer the size/rate asked for: take its default mode.
            Err(ffmpeg::Error::Other { errno }) if errno == libc::EINVAL || errno == libc::EIO => {
                tracing::warn!("camera refused the requested mode; using its default");
                ffmpeg::format::open_with(path, &format()?, ffmpeg::Dictionary::new())
                    .map_err(|e| camera_err(path, e))?
            }
            Err(e) => return Err(camera_err(path, e)),
        };
        let input = ctx.input();
        Self::from_input(input, path, cfg, false)
    }

    fn from_input(
        input: ffmpeg::format::context::Input,
        path: &Path,
        cfg: &CaptureConfig,
        file: bool,
    ) -> Result<Self, CaptureError> {
        let stream = input
            .streams()
            .best(ffmpeg::media::Type::Video)
            .ok_or_else(|| CaptureError::Other("no video stream".into()))?;
        let index = stream.index();
        let rate = stream.avg_frame_rate();
        let fps = if rate.denominator() > 0 && rate.numerator() > 0 {
            rate.numerator() as f64 / rate.denominator() as f64
        } else {
            cfg.fps
        };
        let ctx = ffmpeg::codec::context::Context::from_parameters(stream.parameters())
            .map_err(|e| CaptureError::Other(e.to_string()))?;
        let decoder = ctx
            .decoder()
            .video()
            .map_err(|e| CaptureError::Other(e.to_string()))?;
        let (w, h) = cfg.size.unwrap_or((decoder.width(), decoder.height()));
        if w == 0 || h == 0 {
            return Err(CaptureError::Other("video has no size".into()));
        }
        Ok(Self {
            input,
            stream: index,
            decoder,
            scaler: None,
            size: (w & !1, h & !1),
            fps,
            file,
            path: path.to_path_buf(),
            start: Instant::now(),
            tick: 0,
            draining: false,
        })
    }

    fn convert(&mut self, frame: &ffmpeg::frame::Video) -> Result<I420, CaptureError> {
        let (w, h) = self.size;
        let key = (frame.format(), frame.width(), frame.height());
        if !matches!(&self.scaler, Some((_, f, fw, fh)) if (*f, *fw, *fh) == key) {
            let ctx = scaling::Context::get(
                key.0,
                key.1,
                key.2,
                Pixel::YUV420P,
                w,
                h,
                scaling::Flags::BILINEAR,
            )
            .map_err(|e| CaptureError::Other(format!("scaler: {e}")))?;
            self.scaler = Some((Scaler(ctx), key.0, key.1, key.2));
        }
        let mut out = ffmpeg::frame::Video::empty();
        if let Some((s, ..)) = &mut self.scaler {
            s.0.run(frame, &mut out)
                .map_err(|e| CaptureError::Other(format!("scaler: {e}")))?;
        }
        Ok(crate::decode::to_i420(&out))
    }

    fn read_decoded(&mut self) -> Result<ffmpeg::frame::Video, CaptureError> {
        let mut frame = ffmpeg::frame::Video::empty();
        loop {
            match self.decoder.receive_frame(&mut frame) {
                Ok(()) => return Ok(frame),
                Err(ffmpeg::Error::Eof) if self.file => {
                    // Loop: back to the start. Raw streams cannot seek: open them again.
                    if self.input.seek(0, ..).is_err() {
                        self.input = ffmpeg::format::input(&self.path)
                            .map_err(|e| file_err(&self.path, e))?;
                    }
                    self.decoder.flush();
                    self.draining = false;
                    continue;
                }
                Err(ffmpeg::Error::Eof) => {
                    return Err(CaptureError::Other(format!(
                        "{} stopped delivering frames",
                        self.path.display()
                    )))
                }
                Err(ffmpeg::Error::Other { errno }) if errno == libc::EAGAIN => {}
                Err(e) => return Err(CaptureError::Other(format!("decode: {e}"))),
            }
            if self.draining {
                continue;
            }
            let mut packet = ffmpeg::Packet::empty();
            match packet.read(&mut self.input) {
                Ok(()) if packet.stream() == self.stream => {
                    // A damaged packet in a file or a glitch from a camera: skip it.
                    if let Err(e) = self.decoder.send_packet(&packet) {
                        tracing::debug!("skipping undecodable packet: {e}");
                    }
                }
                Ok(()) => {}
                Err(ffmpeg::Error::Eof) => {
                    self.draining = true;
                    let _ = self.decoder.send_eof();
                }
                Err(e) if self.file => return Err(file_err(&self.path, e)),
                Err(e) => return Err(camera_err(&self.path, e)),
            }
        }
    }
}

impl FrameSource for FfmpegSource {
    fn next_frame(&mut self) -> Result<CapturedFrame, CaptureError> {
        let frame = self.read_decoded()?;
        if self.file {
            pace(
                &mut self.start,
                &mut self.tick,
                Duration::from_secs_f64(1.0 / self.fps.max(1.0)),
            );
        }
        let capture_us = clock::now_us();
        let picture = self.convert(&frame)?;
        Ok(CapturedFrame {
            picture,
            capture_us,
        })
    }
    fn size(&self) -> (u32, u32) {
        self.size
    }
    fn fps(&self) -> f64 {
        self.fps
    }
}
