// Samples a 360° video frame by view direction (no sphere mesh) and converts I420 to RGB.
// Mirrors src/projection.rs: +X right, +Y up, front is -Z; equirect longitude 0 at u = 0.5.

struct View {
    // Camera-to-world rotation (columns are the camera axes in world space).
    rot: mat3x3<f32>,
    // tan(fov/2) horizontally and vertically.
    tan_half: vec2<f32>,
    // 0 equirect mono, 1 equirect stereo top-bottom.
    projection: u32,
    // 0 left (top half in stereo), 1 right.
    eye: u32,
};

@group(0) @binding(0) var<uniform> view: View;
@group(0) @binding(1) var tex_y: texture_2d<f32>;
@group(0) @binding(2) var tex_u: texture_2d<f32>;
@group(0) @binding(3) var tex_v: texture_2d<f32>;
@group(0) @binding(4) var samp: sampler;

const PI: f32 = 3.14159265358979;

struct VsOut {
    @builtin(position) pos: vec4<f32>,
    @location(0) ndc: vec2<f32>,
};

// One triangle covering the screen.
@vertex
fn vs_main(@builtin(vertex_index) i: u32) -> VsOut {
    let xy = vec2<f32>(f32((i << 1u) & 2u), f32(i & 2u)) * 2.0 - 1.0;
    var out: VsOut;
    out.pos = vec4<f32>(xy, 0.0, 1.0);
    out.ndc = xy;
    return out;
}

fn equirect_uv(d: vec3<f32>) -> vec2<f32> {
    let lon = atan2(d.x, -d.z);
    let lat = asin(clamp(d.y, -1.0, 1.0));
    return vec2<f32>(0.5 + lon / (2.0 * PI), 0.5 - lat / PI);
}

// BT.709, limited range.
fn yuv_to_rgb(y: f32, u: f32, v: f32) -> vec3<f32> {
    let l = (y - 16.0 / 255.0) * (255.0 / 219.0);
    let cb = (u - 128.0 / 255.0) * (255.0 / 224.0);
    let cr = (v - 128.0 / 255.0) * (255.0 / 224.0);
    return clamp(vec3<f32>(
        l + 1.5748 * cr,
        l - 0.187324 * cb - 0.468124 * cr,
        l + 1.8556 * cb,
    ), vec3<f32>(0.0), vec3<f32>(1.0));
}

@fragment
fn fs_main(in: VsOut) -> @location(0) vec4<f32> {
    let cam = normalize(vec3<f32>(in.ndc.x * view.tan_half.x, in.ndc.y * view.tan_half.y, -1.0));
    let d = view.rot * cam;
    var uv = equirect_uv(d);
    if (view.projection == 1u) {
        uv.y = uv.y * 0.5 + f32(view.eye) * 0.5;
    }
    let y = textureSampleLevel(tex_y, samp, uv, 0.0).r;
    let u = textureSampleLevel(tex_u, samp, uv, 0.0).r;
    let v = textureSampleLevel(tex_v, samp, uv, 0.0).r;
    return vec4<f32>(yuv_to_rgb(y, u, v), 1.0);
}
