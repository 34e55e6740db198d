//! A CPU reference of the GPU projection: the same maths as `shaders/equirect.wgsl`, with
//! bilinear sampling like the GPU sampler (repeat in longitude, clamp in latitude). Tests
//! compare offscreen renders against it.

use super::ViewParams;
use crate::picture::I420;
use crate::projection::{
    dir_to_dual_fisheye, dir_to_equirect, mat_apply, normalize, pixel_ray_tangents, yuv_to_rgb_f,
};
use inclubit_rendezvous::wire::media::Projection;

fn sample(pic: &I420, plane: usize, uv: [f32; 2]) -> f32 {
    let (w, h) = pic.plane_size(plane);
    let x = uv[0] * w as f32 - 0.5;
    let y = (uv[1] * h as f32 - 0.5).clamp(0.0, h as f32 - 1.0);
    let (x0, y0) = (x.floor(), y.floor());
    let (fx, fy) = (x - x0, y - y0);
    let at = |xi: i64, yi: i64| -> f32 {
        let xi = xi.rem_euclid(w as i64) as usize;
        let yi = yi.clamp(0, h as i64 - 1) as usize;
        pic.planes[plane][yi * pic.strides[plane] + xi] as f32 / 255.0
    };
    let (xi, yi) = (x0 as i64, y0 as i64);
    let top = at(xi, yi) * (1.0 - fx) + at(xi + 1, yi) * fx;
    let bottom = at(xi, yi + 1) * (1.0 - fx) + at(xi + 1, yi + 1) * fx;
    top * (1.0 - fy) + bottom * fy
}

/// Linear RGB (0..1) at `uv`, converted from bilinearly sampled planes like the GPU does.
fn sample_rgb(pic: &I420, uv: [f32; 2]) -> [f32; 3] {
    let yuv = [0, 1, 2].map(|p| sample(pic, p, uv));
    yuv_to_rgb_f(yuv).map(|c| c as f32 / 255.0)
}

/// Renders `w`×`h` RGBA, the way the GPU renderer does.
pub fn render(pic: &I420, view: &ViewParams, w: u32, h: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity((w * h * 4) as usize);
    let rot = view.rotation();
    let aspect = pic.height as f32 / pic.width as f32;
    let tan = view.tangents(w as f32 / h as f32);
    for y in 0..h {
        for x in 0..w {
            let d = normalize(mat_apply(rot, pixel_ray_tangents(x, y, w, h, tan)));
            let rgb = match view.projection {
                Projection::DualFisheye => {
                    let (front, back, wf) = dir_to_dual_fisheye(d, &view.lens, aspect);
                    let (a, b) = (sample_rgb(pic, front), sample_rgb(pic, back));
                    [0, 1, 2].map(|i| b[i] + (a[i] - b[i]) * wf)
                }
                p => {
                    let mut uv = dir_to_equirect(d);
                    if p == Projection::EquirectStereoTopBottom {
                        uv[1] = uv[1] * 0.5 + view.eye as f32 * 0.5;
                    }
                    sample_rgb(pic, uv)
                }
            };
            let rgb = rgb.map(|c| (c.clamp(0.0, 1.0) * 255.0).round() as u8);
            out.extend_from_slice(&[rgb[0], rgb[1], rgb[2], 255]);
        }
    }
    out
}
