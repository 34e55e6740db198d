//! `send --record FILE.mkv|.mp4`: the full-size rendition as encoded, muxed by FFmpeg without
//! re-encoding, with spherical-video metadata (equirectangular; top-bottom stereo) so 360
//! players recognise it. One thread, fed by the same channel as the viewers; it starts at a
//! keyframe and, if it ever falls behind, skips to the next one (a recording never holds a
//! frame whose reference is missing).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ffmpeg_next as ffmpeg;
use ffmpeg_sys_next as sys;
use inclubit_rendezvous::wire::media::Projection;
use tokio::sync::broadcast;

use super::ladder::Ladder;
use crate::encode::{nal_types, EncodedFrame};

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("cannot record to {0}: {1}")]
    Open(PathBuf, String),
    #[error("recording to {0}: {1}")]
    Write(PathBuf, String),
}

/// A running recording; [`Recorder::finish`] closes the file.
pub struct Recorder {
    thread: Option<std::thread::JoinHandle<Result<u64, RecordError>>>,
}

impl Recorder {
    /// Checks that FFmpeg can write `path` (by its extension) and starts recording.
    pub fn start(
        path: &Path,
        projection: Projection,
        orientation: [f32; 3],
        frames: broadcast::Receiver<Arc<EncodedFrame>>,
        ladder: Arc<Ladder>,
    ) -> Result<Self, RecordError> {
        crate::media_init();
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        if !matches!(ext.as_deref(), Some("mkv" | "mp4" | "mov")) {
            return Err(RecordError::Open(
                path.into(),
                "name it .mkv or .mp4 (the container is chosen by the extension)".into(),
            ));
        }
        // Fail now, before streaming, on an unwritable place.
        let octx = ffmpeg::format::output(&path)
            .map_err(|e| RecordError::Open(path.into(), e.to_string()))?;
        drop(octx);
        let path = path.to_path_buf();
        // The file starts at a keyframe: ask for one now rather than wait for a viewer.
        ladder.renditions[0].keyframe_after_loss();
        let thread = std::thread::Builder::new()
            .name("record".into())
            .spawn(move || record(&path, projection, orientation, frames, &ladder))
            .map_err(|e| RecordError::Open(PathBuf::new(), e.to_string()))?;
        Ok(Self {
            thread: Some(thread),
        })
    }

    /// Waits for the stream to end and the file to be closed; the frames written.
    pub fn finish(mut self) -> Result<u64, RecordError> {
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(RecordError::Write(
                PathBuf::new(),
                "recorder panicked".into(),
            )),
            None => Ok(0),
        }
    }
}

/// The SPS and PPS NAL units of an Annex-B access unit (start codes kept): the stream's
/// extradata.
fn parameter_sets(au: &[u8]) -> Vec<u8> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= au.len() {
        if au[i..].starts_with(&[0, 0, 1]) {
            starts.push(i);
            i += 3;
        } else {
            i += 1;
        }
    }
    let mut out = Vec::new();
    for (k, &s) in starts.iter().enumerate() {
        let end = starts.get(k + 1).copied().unwrap_or(au.len());
        if let Some(&h) = au.get(s + 3) {
            if matches!(h & 0x1f, 7 | 8) {
                out.extend_from_slice(&[0, 0, 0, 1]);
                out.extend_from_slice(&au[s + 3..end]);
            }
        }
    }
    // A trailing zero byte belongs to the next start code, not to the NAL.
    out
}

fn record(
    path: &Path,
    projection: Projection,
    orientation: [f32; 3],
    mut frames: broadcast::Receiver<Arc<EncodedFrame>>,
    ladder: &Ladder,
) -> Result<u64, RecordError> {
    let wr = |e: ffmpeg::Error| RecordError::Write(path.into(), e.to_string());
    // The first keyframe of the full size.
    let first = loop {
        match frames.blocking_recv() {
            Ok(f) if f.rendition == 0 && f.keyframe => break f,
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => return Ok(0),
        }
    };
    let mut octx =
        ffmpeg::format::output(&path).map_err(|e| RecordError::Open(path.into(), e.to_string()))?;
    let extradata = parameter_sets(&first.data);
    {
        let mut st = octx
            .add_stream(ffmpeg::encoder::find(ffmpeg::codec::Id::None))
            .map_err(wr)?;
        st.set_time_base(ffmpeg::Rational(1, 90_000));
        // SAFETY: the stream and its parameters belong to `octx`, alive here; extradata is
        // allocated with av_mallocz (padding zeroed) and owned by the parameters from then on.
        unsafe {
            let par = (*st.as_mut_ptr()).codecpar;
            (*par).codec_type = sys::AVMediaType::AVMEDIA_TYPE_VIDEO;
            (*par).codec_id = sys::AVCodecID::AV_CODEC_ID_H264;
            (*par).width = first.width as i32;
            (*par).height = first.height as i32;
            let pad = sys::AV_INPUT_BUFFER_PADDING_SIZE as usize;
            let buf = sys::av_mallocz(extradata.len() + pad) as *mut u8;
            if !buf.is_null() {
                std::ptr::copy_nonoverlapping(extradata.as_ptr(), buf, extradata.len());
                (*par).extradata = buf;
                (*par).extradata_size = extradata.len() as i32;
            }
            add_spherical(st.as_mut_ptr(), projection, orientation);
        }
    }
    // SAFETY: the format context is alive; MP4 writes its sv3d/st3d boxes only when allowed
    // "unofficial" extensions (the Spherical Video V2 boxes are not in ISO BMFF yet).
    unsafe {
        (*octx.as_mut_ptr()).strict_std_compliance = sys::FF_COMPLIANCE_UNOFFICIAL;
    }
    octx.write_header().map_err(wr)?;
    let tb = octx
        .stream(0)
        .map(|s| s.time_base())
        .unwrap_or(ffmpeg::Rational(1, 90_000));
    let t0 = first.capture_us;
    let mut last_pts: Option<i64> = None;
    let mut written = 0u64;
    let mut next = Some(first);
    let mut waiting_key = false;
    loop {
        let f = match next.take() {
            Some(f) => f,
            None => match frames.blocking_recv() {
                Ok(f) => f,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(frames = n, "recording fell behind; going on at a keyframe");
                    waiting_key = true;
                    ladder.renditions[0].keyframe_after_loss();
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
        };
        if f.rendition != 0 || (waiting_key && !f.keyframe) {
            continue;
        }
        waiting_key = false;
        let us = f.capture_us.saturating_sub(t0) as i64;
        let mut pts = us * tb.denominator() as i64 / (1_000_000 * tb.numerator().max(1) as i64);
        // Strictly increasing, whatever the capture clock did.
        if let Some(l) = last_pts {
            pts = pts.max(l + 1);
        }
        last_pts = Some(pts);
        let mut pkt = ffmpeg::Packet::copy(&f.data);
        pkt.set_stream(0);
        pkt.set_pts(Some(pts));
        pkt.set_dts(Some(pts));
        if f.keyframe && nal_types(&f.data).contains(&5) {
            pkt.set_flags(ffmpeg::packet::Flags::KEY);
        }
        pkt.write_interleaved(&mut octx).map_err(wr)?;
        written += 1;
    }
    octx.write_trailer().map_err(wr)?;
    tracing::info!(frames = written, path = %path.display(), "recording closed");
    Ok(written)
}

/// Spherical Video V2 metadata on the stream: equirectangular, the scene's yaw/pitch/roll, and
/// for stereo which eye is where. Dual fisheye has no such type in this FFmpeg: none is added.
///
/// # Safety
/// `st` must be a valid stream of an output context that has not written its header yet.
unsafe fn add_spherical(st: *mut sys::AVStream, projection: Projection, orientation: [f32; 3]) {
    if projection == Projection::DualFisheye {
        return;
    }
    let mut size = 0usize;
    let sph = sys::av_spherical_alloc(&mut size);
    if sph.is_null() {
        return;
    }
    (*sph).projection = sys::AVSphericalProjection::AV_SPHERICAL_EQUIRECTANGULAR;
    // 16.16 fixed-point degrees.
    let fixed = |d: f32| (d * 65536.0) as i32;
    (*sph).yaw = fixed(orientation[0]);
    (*sph).pitch = fixed(orientation[1]);
    (*sph).roll = fixed(orientation[2]);
    let spherical = sys::AVPacketSideDataType::AV_PKT_DATA_SPHERICAL;
    give_side_data(st, spherical, sph as *mut u8, size);
    if projection == Projection::EquirectStereoTopBottom {
        let s3d = sys::av_stereo3d_alloc();
        if s3d.is_null() {
            return;
        }
        (*s3d).type_ = sys::AVStereo3DType::AV_STEREO3D_TOPBOTTOM;
        let len = std::mem::size_of::<sys::AVStereo3D>();
        give_side_data(
            st,
            sys::AVPacketSideDataType::AV_PKT_DATA_STEREO3D,
            s3d as *mut u8,
            len,
        );
    }
}

/// Hands `data` (from av_malloc) to the stream, or frees it when the stream refuses it.
///
/// # Safety
/// `st` valid, `data` an av_malloc'd block of `len` bytes owned by the caller until now.
unsafe fn give_side_data(
    st: *mut sys::AVStream,
    kind: sys::AVPacketSideDataType,
    data: *mut u8,
    len: usize,
) {
    if sys::av_stream_add_side_data(st, kind, data, len) < 0 {
        sys::av_free(data as *mut _);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_sets_are_the_sps_and_pps_with_four_byte_start_codes() {
        let au = [
            0, 0, 0, 1, 0x67, 1, 2, // SPS
            0, 0, 1, 0x68, 3, // PPS
            0, 0, 1, 0x65, 9, 9, // IDR slice
        ];
        assert_eq!(
            parameter_sets(&au),
            [0, 0, 0, 1, 0x67, 1, 2, 0, 0, 0, 1, 0x68, 3]
        );
        assert!(parameter_sets(&[0, 0, 1, 0x41, 5]).is_empty());
    }
}
