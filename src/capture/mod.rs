//! Frame sources: the built-in test card, a video file (looped, paced to its frame rate) and a
//! V4L2 camera, all producing [`I420`] pictures with a capture timestamp.

mod ffmpeg_input;
pub mod testcard;

use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, Instant};

use crate::clock;
use crate::picture::I420;

/// What `--source` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSpec {
    TestCard,
    /// The test card under moving fine detail: encodes at camera-like rates (`testcard:busy`).
    BusyTestCard,
    File(PathBuf),
    Camera(PathBuf),
}

impl FromStr for SourceSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s.split_once(':') {
            _ if s == "testcard" => Self::TestCard,
            _ if s == "testcard:busy" => Self::BusyTestCard,
            _ if s == "camera" => Self::Camera("/dev/video0".into()),
            Some(("file", p)) if !p.is_empty() => Self::File(p.into()),
            Some(("camera", p)) if !p.is_empty() => Self::Camera(p.into()),
            _ => {
                return Err(format!(
                    "unknown source `{s}`: use testcard, testcard:busy, file:PATH or camera:/dev/videoN"
                ))
            }
        })
    }
}

impl std::fmt::Display for SourceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TestCard => f.write_str("testcard"),
            Self::BusyTestCard => f.write_str("testcard:busy"),
            Self::File(p) => write!(f, "file:{}", p.display()),
            Self::Camera(p) => write!(f, "camera:{}", p.display()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct CaptureConfig {
    /// Output size; `None` keeps the source's own size (the test card needs one).
    pub size: Option<(u32, u32)>,
    /// Frames per second for the test card and the camera request; files keep their own rate.
    pub fps: f64,
    /// Ask the camera for MJPEG rather than raw frames.
    pub mjpeg: bool,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        Self {
            size: None,
            fps: 30.0,
            mjpeg: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("no camera at {0}")]
    NoCamera(PathBuf),
    #[error("camera {0} is busy (another program is using it)")]
    CameraBusy(PathBuf),
    #[error("no permission to open camera {0} (add yourself to the `video` group)")]
    CameraDenied(PathBuf),
    #[error("cannot open camera {path}: {reason}")]
    Camera { path: PathBuf, reason: String },
    #[error("no such file: {0}")]
    NoFile(PathBuf),
    #[error("cannot read video from {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("{0}")]
    Other(String),
}

pub struct CapturedFrame {
    pub picture: I420,
    /// Wall-clock microseconds (see [`clock::now_us`]) when the frame was captured.
    pub capture_us: u64,
}

/// A blocking source of frames, paced at its own rate.
pub trait FrameSource: Send {
    fn next_frame(&mut self) -> Result<CapturedFrame, CaptureError>;
    fn size(&self) -> (u32, u32);
    fn fps(&self) -> f64;
}

pub fn open(spec: &SourceSpec, cfg: &CaptureConfig) -> Result<Box<dyn FrameSource>, CaptureError> {
    match spec {
        SourceSpec::TestCard | SourceSpec::BusyTestCard => {
            let (w, h) = cfg.size.unwrap_or((1920, 960));
            let mut src = TestCardSource::new(w, h, cfg.fps);
            if *spec == SourceSpec::BusyTestCard {
                src.card = src.card.busy();
            }
            Ok(Box::new(src))
        }
        SourceSpec::File(p) => Ok(Box::new(ffmpeg_input::FfmpegSource::file(p, cfg)?)),
        SourceSpec::Camera(p) => Ok(Box::new(ffmpeg_input::FfmpegSource::camera(p, cfg)?)),
    }
}

/// Sleeps until the start of frame `n` of a stream that began at `start`. If the caller is
/// late by more than a frame, the schedule restarts from now instead of bursting to catch up.
pub(crate) fn pace(start: &mut Instant, n: &mut u64, interval: Duration) {
    let due = *start + interval.mul_f64(*n as f64);
    let now = Instant::now();
    if due > now {
        std::thread::sleep(due - now);
    } else if now - due > interval {
        *start = now;
        *n = 0;
    }
    *n += 1;
}

pub struct TestCardSource {
    card: testcard::TestCard,
    size: (u32, u32),
    fps: f64,
    n: u64,
    start: Instant,
    tick: u64,
}

impl TestCardSource {
    pub fn new(width: u32, height: u32, fps: f64) -> Self {
        // Even sizes: chroma is subsampled 2×2.
        let (w, h) = (width.max(64) & !1, height.max(32) & !1);
        Self {
            card: testcard::TestCard::new(w, h),
            size: (w, h),
            fps,
            n: 0,
            start: Instant::now(),
            tick: 0,
        }
    }
}

impl FrameSource for TestCardSource {
    fn next_frame(&mut self) -> Result<CapturedFrame, CaptureError> {
        pace(
            &mut self.start,
            &mut self.tick,
            Duration::from_secs_f64(1.0 / self.fps),
        );
        let capture_us = clock::now_us();
        let picture = self.card.frame(self.n, clock::ms_of_day(capture_us));
        self.n += 1;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_specs_parse() {
        assert_eq!("testcard".parse(), Ok(SourceSpec::TestCard));
        assert_eq!(
            "camera:/dev/video2".parse(),
            Ok(SourceSpec::Camera("/dev/video2".into()))
        );
        assert_eq!(
            "camera".parse(),
            Ok(SourceSpec::Camera("/dev/video0".into()))
        );
        assert_eq!("file:a.mp4".parse(), Ok(SourceSpec::File("a.mp4".into())));
        assert!("webcam".parse::<SourceSpec>().is_err());
        assert!("file:".parse::<SourceSpec>().is_err());
    }

    #[test]
    fn missing_camera_and_file_are_named() {
        let cfg = CaptureConfig::default();
        let e = open(&SourceSpec::Camera("/dev/video99".into()), &cfg)
            .err()
            .unwrap();
        assert_eq!(e.to_string(), "no camera at /dev/video99");
        let e = open(&SourceSpec::File("/nonexistent/x.mp4".into()), &cfg)
            .err()
            .unwrap();
        assert_eq!(e.to_string(), "no such file: /nonexistent/x.mp4");
    }

    #[test]
    fn file_source_decodes_scales_and_loops() {
        use crate::encode::{Encoder, EncoderConfig};
        use testcard::{read_barcode, TestCard};
        let dir = std::env::temp_dir().join(format!("inclubit-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("card.h264");
        let card = TestCard::new(640, 320);
        let mut enc = Encoder::new(EncoderConfig {
            width: 640,
            height: 320,
            fps: 30,
            bitrate: 2_000_000,
            threads: 1,
        })
        .unwrap();
        let mut bytes = Vec::new();
        for n in 0..10 {
            let f = enc.encode(&card.frame(n, 0), n, 0, false).unwrap().unwrap();
            bytes.extend_from_slice(&f.data);
        }
        std::fs::write(&path, bytes).unwrap();
        let cfg = CaptureConfig {
            size: Some((640, 320)),
            fps: 30.0,
            mjpeg: false,
        };
        let mut src = open(&SourceSpec::File(path.clone()), &cfg).unwrap();
        assert_eq!(src.size(), (640, 320));
        // Ten frames, then the file starts again.
        let seen: Vec<_> = (0..15)
            .map(|_| read_barcode(&src.next_frame().unwrap().picture))
            .collect();
        let want: Vec<_> = (0..15).map(|i| Some(i % 10)).collect();
        assert_eq!(seen, want);
        // Scaled output keeps the picture.
        let mut small = open(
            &SourceSpec::File(path),
            &CaptureConfig {
                size: Some((320, 160)),
                ..cfg
            },
        )
        .unwrap();
        let p = small.next_frame().unwrap().picture;
        assert_eq!((p.width, p.height), (320, 160));
    }

    #[test]
    fn a_file_that_is_not_video_is_a_clear_error() {
        let dir = std::env::temp_dir().join(format!("inclubit-cap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("notvideo.mp4");
        std::fs::write(&p, b"this is not a video").unwrap();
        let e = open(&SourceSpec::File(p.clone()), &CaptureConfig::default())
            .err()
            .unwrap();
        assert!(
            e.to_string()
                .starts_with(&format!("cannot read video from {}", p.display())),
            "{e}"
        );
    }
}
