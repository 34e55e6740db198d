//! The built-in test card: an equirect image with a distinct colour per cube face (so a test can
//! check "right direction" after projection), a 24-bit frame-number barcode with a checksum
//! ("right frame", read back from the decoded image), a clock and a moving marker.

use crate::picture::I420;
use crate::projection::{equirect_to_dir, rgb_to_yuv, Face};

/// Latitude band of the barcode: v = 1/6 (60° up), away from the face centres and the poles.
const BARCODE_V: f32 = 1.0 / 6.0;
/// Latitude band of the clock and moving marker: v = 5/6 (60° down).
const CLOCK_V: f32 = 5.0 / 6.0;
const BITS: u32 = 32;

pub struct TestCard {
    base: I420,
    width: u32,
    height: u32,
    /// Busy: two layers of fine luma detail drifting against each other (see [`TestCard::busy`]).
    detail: Option<Detail>,
}

/// Zero-mean luma noise, each row twice the picture width so a shifted window is one slice.
struct Detail {
    a: Vec<i8>,
    b: Vec<i8>,
}

/// Peak luma change of each detail layer: keeps each face's mean colour (what tests read by
/// direction) while no block of the picture is flat.
const DETAIL_AMPLITUDE: i32 = 18;

/// Side of one barcode cell in pixels, a multiple of 8 so cells sit on codec blocks.
fn cell(width: u32) -> u32 {
    ((width / 64) / 8 * 8).clamp(8, 32)
}

fn band_top(height: u32, v: f32, cell: u32) -> u32 {
    ((height as f32 * v) as u32 / cell) * cell
}

fn checksum(n: u32) -> u32 {
    let b = n.to_be_bytes();
    (b[1] ^ b[2] ^ b[3] ^ 0x5A).wrapping_add(b[1].rotate_left(3)) as u32
}

impl TestCard {
    pub fn new(width: u32, height: u32) -> Self {
        let mut base = I420::new(width, height);
        let [py, pu, pv] = &mut base.planes;
        for y in 0..height {
            for x in 0..width {
                let uv = [
                    (x as f32 + 0.5) / width as f32,
                    (y as f32 + 0.5) / height as f32,
                ];
                let yuv = rgb_to_yuv(Face::of(equirect_to_dir(uv)).colour());
                py[(y * width + x) as usize] = yuv[0];
            }
        }
        let (cw, ch) = I420::chroma_size(width, height);
        for y in 0..ch {
            for x in 0..cw {
                let uv = [
                    (2 * x + 1) as f32 / width as f32,
                    (2 * y + 1) as f32 / height as f32,
                ];
                let yuv = rgb_to_yuv(Face::of(equirect_to_dir(uv)).colour());
                pu[(y * cw + x) as usize] = yuv[1];
                pv[(y * cw + x) as usize] = yuv[2];
            }
        }
        Self {
            base,
            width,
            height,
            detail: None,
        }
    }

    /// Camera-like content: fine detail everywhere, in two layers drifting in opposite
    /// directions at different speeds, so no single motion vector predicts a block and the
    /// encoder needs camera rates (a 360 camera gives 15–40 Mbit/s at 3840×1920). Barcode,
    /// clock and the face colours (on average) stay readable.
    pub fn busy(mut self) -> Self {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x001c_1b17);
        let len = 2 * self.width as usize * self.height as usize;
        let amp = DETAIL_AMPLITUDE as i8;
        let mut layer = || -> Vec<i8> { (0..len).map(|_| rng.gen_range(-amp..=amp)).collect() };
        self.detail = Some(Detail {
            a: layer(),
            b: layer(),
        });
        self
    }
    /// Frame `n`, stamped with the wall-clock time `clock_ms` (milliseconds of the day).
    pub fn frame(&self, n: u64, clock_ms: u64) -> I420 {
        let mut p = self.base.clone();
        if let Some(d) = &self.detail {
            self.add_detail(&mut p, d, n);
        }
        let c = cell(self.width);
        let word = ((n as u32 & 0xFF_FFFF) << 8) | checksum(n as u32 & 0xFF_FFFF);
        let top = band_top(self.height, BARCODE_V, c);
        // Two cells of margin, then 32 cells, most significant bit first.
        for bit in 0..BITS {
            let on = word >> (BITS - 1 - bit) & 1 == 1;
            fill_luma(&mut p, (2 + bit) * c, top, c, c, if on { 235 } else { 16 });
        }
        let clock_top = band_top(self.height, CLOCK_V, c);
        // A marker that goes round the sphere once every four seconds at 30 fps.
        let span = self.width.saturating_sub(2 * c).max(1);
        let mx = ((n * span as u64 / 120) % span as u64) as u32;
        fill_luma(&mut p, mx, clock_top + c, 2 * c, c, 235);
        let secs = clock_ms / 1000;
        let text = format!(
            "{:02}:{:02}:{:02}.{:03} #{}",
            secs / 3600 % 24,
            secs / 60 % 60,
            secs % 60,
            clock_ms % 1000,
            n
        );
        draw_text(
            &mut p,
            &text,
            2 * c,
            clock_top - 6 * (c / 4).max(2),
            (c / 4).max(2),
        );
        p
    }
}

impl TestCard {
    fn add_detail(&self, p: &mut I420, d: &Detail, n: u64) {
        let w = self.width as usize;
        // Layer a drifts right 3 px a frame, layer b left 5 px and down 1 px.
        let sa = (n as usize * 3) % w;
        let sb = w - 1 - (n as usize * 5) % w;
        let stride = p.strides[0];
        for y in 0..self.height as usize {
            let yb = (y + n as usize) % self.height as usize;
            let a = &d.a[y * 2 * w + sa..][..w];
            let b = &d.b[yb * 2 * w + sb..][..w];
            let row = &mut p.planes[0][y * stride..][..w];
            for ((px, da), db) in row.iter_mut().zip(a).zip(b) {
                *px = (*px as i32 + *da as i32 + *db as i32).clamp(16, 235) as u8;
            }
        }
    }
}

fn fill_luma(p: &mut I420, x0: u32, y0: u32, w: u32, h: u32, value: u8) {
    let stride = p.strides[0];
    for y in y0..(y0 + h).min(p.height) {
        let row = y as usize * stride;
        let x1 = (x0 + w).min(p.width);
        if x0 < x1 {
            p.planes[0][row + x0 as usize..row + x1 as usize].fill(value);
        }
    }
    // Neutral chroma so bits read the same whatever the face colour.
    let (cs, cw) = (p.strides[1], p.width.div_ceil(2));
    for y in y0 / 2..((y0 + h).div_ceil(2)).min(p.height.div_ceil(2)) {
        let row = y as usize * cs;
        let (cx0, cx1) = ((x0 / 2).min(cw), (x0 + w).div_ceil(2).min(cw));
        p.planes[1][row + cx0 as usize..row + cx1 as usize].fill(128);
        p.planes[2][row + cx0 as usize..row + cx1 as usize].fill(128);
    }
}

/// 3×5 digits, then ':' '.' '#', one row per 3 bits.
const GLYPHS: [[u8; 5]; 13] = [
    [7, 5, 5, 5, 7],
    [2, 6, 2, 2, 7],
    [7, 1, 7, 4, 7],
    [7, 1, 7, 1, 7],
    [5, 5, 7, 1, 1],
    [7, 4, 7, 1, 7],
    [7, 4, 7, 5, 7],
    [7, 1, 1, 1, 1],
    [7, 5, 7, 5, 7],
    [7, 5, 7, 1, 7],
    [0, 2, 0, 2, 0],
    [0, 0, 0, 0, 2],
    [5, 7, 5, 7, 5],
];

fn draw_text(p: &mut I420, text: &str, x0: u32, y0: u32, scale: u32) {
    let mut x = x0;
    for ch in text.chars() {
        let g = match ch {
            '0'..='9' => Some(GLYPHS[ch as usize - '0' as usize]),
            ':' => Some(GLYPHS[10]),
            '.' => Some(GLYPHS[11]),
            '#' => Some(GLYPHS[12]),
            _ => None,
        };
        if let Some(g) = g {
            fill_luma(p, x - scale / 2, y0 - scale / 2, 4 * scale, 6 * scale, 16);
            for (row, bits) in g.iter().enumerate() {
                for col in 0..3 {
                    if bits >> (2 - col) & 1 == 1 {
                        fill_luma(
                            p,
                            x + col * scale,
                            y0 + row as u32 * scale,
                            scale,
                            scale,
                            235,
                        );
                    }
                }
            }
        }
        x += 4 * scale;
    }
}

/// Reads the frame number (mod 2²⁴) from a decoded test-card picture; `None` if the barcode does
/// not check out (not a test card, or a corrupt picture).
pub fn read_barcode(p: &I420) -> Option<u32> {
    let c = cell(p.width);
    let top = band_top(p.height, BARCODE_V, c);
    let mut word = 0u32;
    for bit in 0..BITS {
        let x0 = (2 + bit) * c + c / 4;
        let mut sum = 0u32;
        let mut n = 0u32;
        for y in top + c / 4..top + 3 * c / 4 {
            for x in x0..x0 + c / 2 {
                if x < p.width && y < p.height {
                    sum += p.luma(x, y) as u32;
                    n += 1;
                }
            }
        }
        let bit_on = n > 0 && sum / n > 125;
        word = (word << 1) | bit_on as u32;
    }
    let n = word >> 8;
    (word & 0xFF == checksum(n)).then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::projection::{colour_distance, dir_to_equirect, yuv_to_rgb};

    #[test]
    fn barcode_roundtrip_on_raw_frames() {
        let card = TestCard::new(640, 320);
        for n in [0u64, 1, 2, 255, 256, 65_535, 0xFF_FFFF, 0x1_000_005] {
            assert_eq!(
                read_barcode(&card.frame(n, 1234)),
                Some(n as u32 & 0xFF_FFFF)
            );
        }
        // A blank picture is not mistaken for a frame.
        assert_eq!(read_barcode(&I420::new(640, 320)), None);
    }

    #[test]
    fn face_centres_have_face_colours() {
        let card = TestCard::new(640, 320);
        let f = card.frame(7, 0);
        for face in Face::ALL {
            let (yaw, pitch) = face.angles();
            let uv = dir_to_equirect(crate::projection::dir_from_angles(yaw, pitch * 0.9));
            let (x, y) = (
                ((uv[0] * 640.0) as u32).min(639),
                ((uv[1] * 320.0) as u32).min(319),
            );
            let rgb = f.rgb_at(x, y);
            assert!(
                colour_distance(rgb, face.colour()) <= 4,
                "{face:?} {rgb:?} at {x},{y}"
            );
            assert!(colour_distance(yuv_to_rgb(rgb_to_yuv(face.colour())), rgb) <= 4);
        }
    }
}
