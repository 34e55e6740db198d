// Samples a 360° video frame by view direction (no sphere mesh) and converts I420 to RGB.
// Mirrors src/projection.rs (and web/viewer.js): +X right, +Y up, front is -Z; equirect
// longitude 0 at u = 0.5; dual fisheye: front lens in the left half, back lens in the right.

struct View {
    // Camera-to-video rotation (head pose, then the sender's scene correction).
    rot: mat3x3<f32>,
    // Tangents of the view's left, right, bottom and top edges (asymmetric for headset eyes).
    tangents: vec4<f32>,
    // 0 equirect mono, 1 equirect stereo top-bottom, 2 dual fisheye.
    projection: u32,
    // 0 left (top half in stereo), 1 right.
    eye: u32,
    // 1: the target is sRGB (it encodes what we write), so write linear values.
    linear_out: u32,
    // Dual fisheye lens: field of view (radians), circle centre x (half-widths), y, radius
    // (picture heights).
    lens: vec4<f32>,
};

// Immediates, not a uniform buffer: see DEVICE_FEATURES in src/render/mod.rs (issue 11).
var<immediate> view: View;
// Pipeline constants (one pipeline each), so the shader is specialised on them.
// 0 equirect mono, 1 equirect stereo top-bottom, 2 dual fisheye.
override PROJECTION: u32 = 0u;
// 1: the target encodes to sRGB itself, so the shader writes linear values.
override LINEAR_OUT: u32 = 0u;
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

// Equidistant fisheye: a lens-local direction (axis +Z) to its half of the picture.
fn fisheye_uv(l: vec3<f32>, side: f32, aspect: f32) -> vec2<f32> {
    let theta = acos(clamp(l.z, -1.0, 1.0));
    let len = length(l.xy);
    var q = vec2<f32>(0.0, 0.0);
    if (len > 1e-6) {
        q = l.xy / len;
    }
    let r = theta / (view.lens.x * 0.5) * view.lens.w;
    return vec2<f32>(0.5 * side + 0.5 * view.lens.y + q.x * r * aspect, view.lens.z - q.y * r);
}

fn sample_rgb(uv: vec2<f32>) -> vec3<f32> {
    let y = textureSampleLevel(tex_y, samp, uv, 0.0).r;
    let u = textureSampleLevel(tex_u, samp, uv, 0.0).r;
    let v = textureSampleLevel(tex_v, samp, uv, 0.0).r;
    return yuv_to_rgb(y, u, v);
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
    return vec4<f32>(encode(scene(in.ndc)), 1.0);
}

// The video's R'G'B' as stored bytes: an sRGB target encodes, so hand it linear values.
fn encode(rgb: vec3<f32>) -> vec3<f32> {
    if (LINEAR_OUT == 0u) {
        return rgb;
    }
    let lo = rgb / 12.92;
    let hi = pow((rgb + 0.055) / 1.055, vec3<f32>(2.4));
    return select(hi, lo, rgb <= vec3<f32>(0.04045));
}

fn scene(ndc: vec2<f32>) -> vec3<f32> {
    let f = (ndc + 1.0) * 0.5;
    let cam = normalize(vec3<f32>(
        mix(view.tangents.x, view.tangents.y, f.x),
        mix(view.tangents.z, view.tangents.w, f.y),
        -1.0,
    ));
    let d = normalize(view.rot * cam);
    if (PROJECTION == 2u) {
        let size = vec2<f32>(textureDimensions(tex_y));
        let aspect = size.y / size.x;
        let half_fov = view.lens.x * 0.5;
        let off_front = acos(clamp(-d.z, -1.0, 1.0));
        let t = clamp((half_fov - off_front) / (2.0 * half_fov - PI), 0.0, 1.0);
        let w = t * t * (3.0 - 2.0 * t);
        let front = sample_rgb(fisheye_uv(vec3<f32>(d.x, d.y, -d.z), 0.0, aspect));
        let back = sample_rgb(fisheye_uv(vec3<f32>(-d.x, d.y, d.z), 1.0, aspect));
        return mix(back, front, w);
    }
    var uv = equirect_uv(d);
    if (PROJECTION == 1u) {
        uv.y = uv.y * 0.5 + f32(view.eye) * 0.5;
    }
    return sample_rgb(uv);
}
