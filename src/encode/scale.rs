//! Half-size pictures for the ladder's lower rendition, by swscale (area averaging, SIMD).

use ffmpeg::format::Pixel;
use ffmpeg::software::scaling;
use ffmpeg_next as ffmpeg;

use crate::picture::I420;

/// Half the width and height, rounded down to even (what 4:2:0 encoders take).
pub fn half_size(width: u32, height: u32) -> (u32, u32) {
    ((width / 2).max(2) & !1, (height / 2).max(2) & !1)
}

pub struct Halver {
    ctx: scaling::Context,
    src: ffmpeg::frame::Video,
    dst: ffmpeg::frame::Video,
    size: (u32, u32),
}

// SAFETY: a scaling context has no thread affinity; a `Halver` is only used through `&mut` by
// the one thread that owns it.
unsafe impl Send for Halver {}

impl Halver {
    pub fn new(width: u32, height: u32) -> Result<Self, ffmpeg::Error> {
        crate::media_init();
        let (w, h) = half_size(width, height);
        let ctx = scaling::Context::get(
            Pixel::YUV420P,
            width,
            height,
            Pixel::YUV420P,
            w,
            h,
            scaling::Flags::AREA,
        )?;
        Ok(Self {
            ctx,
            src: ffmpeg::frame::Video::new(Pixel::YUV420P, width, height),
            dst: ffmpeg::frame::Video::empty(),
            size: (width, height),
        })
    }

    /// `pic` (of the size this was made for) at half size.
    pub fn half(&mut self, pic: &I420) -> Result<I420, ffmpeg::Error> {
        if (pic.width, pic.height) != self.size {
            return Err(ffmpeg::Error::InvalidData);
        }
        for i in 0..3 {
            let (w, h) = pic.plane_size(i);
            let stride = self.src.stride(i);
            let dst = self.src.data_mut(i);
            for row in 0..h as usize {
                dst[row * stride..][..w as usize]
                    .copy_from_slice(&pic.planes[i][row * pic.strides[i]..][..w as usize]);
            }
        }
        self.ctx.run(&self.src, &mut self.dst)?;
        Ok(crate::decode::to_i420(&self.dst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::testcard::{read_barcode, TestCard};

    #[test]
    fn half_keeps_the_test_card_readable() {
        let card = TestCard::new(1280, 640).busy();
        let full = card.frame(4242, 0);
        let mut h = Halver::new(1280, 640).unwrap();
        let half = h.half(&full).unwrap();
        assert_eq!((half.width, half.height), (640, 320));
        assert_eq!(read_barcode(&half), Some(4242));
        // The same colour at the same place, at half the coordinates.
        let (a, b) = (full.rgb_at(640, 320), half.rgb_at(320, 160));
        assert!(
            crate::projection::colour_distance(a, b) <= 12,
            "{a:?} {b:?}"
        );
        assert!(h.half(&I420::new(640, 320)).is_err(), "another size");
        assert_eq!(half_size(101, 51), (50, 24));
    }
}
