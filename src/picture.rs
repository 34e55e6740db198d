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
