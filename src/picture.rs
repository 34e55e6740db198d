//! A planar I420 picture (BT.709, limited range): what capture produces, the encoder takes, the
//! decoder gives back and the renderer uploads.

#[derive(Clone)]
pub struct I420 {
    pub width: u32,
    pub height: u32,
    /// Y, U, V.
    pub planes: [Vec<u8>; 3],
    /// Bytes per row of each plane.
    pub strides: [usize; 3],
}

impl std::fmt::Debug for I420 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "I420({}x{})", self.width, self.height)
    }
}

impl I420 {
    pub fn new(width: u32, height: u32) -> Self {
        let (cw, ch) = Self::chroma_size(width, height);
        Self {
            width,
            height,
            planes: [
                vec![16; (width * height) as usize],
                vec![128; (cw * ch) as usize],
                vec![128; (cw * ch) as usize],
            ],
            strides: [width as usize, cw as usize, cw as usize],
        }
    }

    pub fn chroma_size(width: u32, height: u32) -> (u32, u32) {
        (width.div_ceil(2), height.div_ceil(2))
    }

    /// Width and height of plane `i`.
    pub fn plane_size(&self, i: usize) -> (u32, u32) {
        if i == 0 {
            (self.width, self.height)
        } else {
            Self::chroma_size(self.width, self.height)
        }
    }

    /// Half the width and height (rounded down to even), each pixel the mean of a 2×2 block:
    /// the lower rendition of the sender's ladder.
    pub fn half(&self) -> I420 {
        let (w, h) = ((self.width / 2).max(2) & !1, (self.height / 2).max(2) & !1);
        let mut out = I420::new(w, h);
        for i in 0..3 {
            let (dw, dh) = out.plane_size(i);
            let (sw, sh) = self.plane_size(i);
            let (src, ss) = (&self.planes[i], self.strides[i]);
            let ds = out.strides[i];
            let dst = &mut out.planes[i];
            for y in 0..dh as usize {
                let (y0, y1) = (
                    (2 * y).min(sh as usize - 1),
                    (2 * y + 1).min(sh as usize - 1),
                );
                let (r0, r1) = (
                    &src[y0 * ss..][..sw as usize],
                    &src[y1 * ss..][..sw as usize],
                );
                for (x, d) in dst[y * ds..][..dw as usize].iter_mut().enumerate() {
                    let (x0, x1) = (
                        (2 * x).min(sw as usize - 1),
                        (2 * x + 1).min(sw as usize - 1),
                    );
                    let sum = r0[x0] as u32 + r0[x1] as u32 + r1[x0] as u32 + r1[x1] as u32;
                    *d = ((sum + 2) / 4) as u8;
                }
            }
        }
        out
    }

    pub fn luma(&self, x: u32, y: u32) -> u8 {
        self.planes[0][y as usize * self.strides[0] + x as usize]
    }

    /// The colour at a pixel, converted to RGB with the BT.709 limited-range matrix.
    pub fn rgb_at(&self, x: u32, y: u32) -> [u8; 3] {
        let (cx, cy) = (x as usize / 2, y as usize / 2);
        let yv = self.luma(x, y);
        let u = self.planes[1][cy * self.strides[1] + cx];
        let v = self.planes[2][cy * self.strides[2] + cx];
        crate::projection::yuv_to_rgb([yv, u, v])
    }
}

#[cfg(test)]
mod tests {
    use crate::capture::testcard::{read_barcode, TestCard};

    #[test]
    fn half_keeps_the_test_card_readable() {
        let card = TestCard::new(1280, 640).busy();
        let full = card.frame(4242, 0);
        let half = full.half();
        assert_eq!((half.width, half.height), (640, 320));
        assert_eq!(half.strides, [640, 320, 320]);
        assert_eq!(read_barcode(&half), Some(4242));
        // The same colour at the same place, at half the coordinates.
        let (a, b) = (full.rgb_at(640, 320), half.rgb_at(320, 160));
        assert!(
            crate::projection::colour_distance(a, b) <= 12,
            "{a:?} {b:?}"
        );
        // Odd sizes round down to even.
        let odd = super::I420::new(101, 51).half();
        assert_eq!((odd.width, odd.height), (50, 24));
    }
}
