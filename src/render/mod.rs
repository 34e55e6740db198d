//! The wgpu equirect renderer: uploads I420 planes (cheaper than RGBA) and converts to RGB in
//! WGSL, sampling by view direction. The same renderer draws offscreen (tests, `--headless`) and
//! into a window.

pub mod desktop;
pub mod reference;

use std::time::Duration;

use bytemuck::{Pod, Zeroable};
use inclubit_rendezvous::wire::media::{Projection, StreamHello};

use crate::picture::I420;
use crate::projection::{mat_mul, orientation, FisheyeLens, Pose};

pub const SHADER: &str = include_str!("../../shaders/equirect.wgsl");

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("no GPU adapter found (for software rendering install mesa-vulkan-drivers): {0}")]
    NoAdapter(String),
    #[error("GPU device: {0}")]
    Device(String),
    #[error("reading back the rendered image failed: {0}")]
    Readback(String),
}

/// What the camera looks at.
#[derive(Debug, Clone, Copy)]
pub struct ViewParams {
    pub pose: Pose,
    /// Vertical field of view in degrees.
    pub fov_y_deg: f32,
    pub projection: Projection,
    /// 0 left, 1 right.
    pub eye: u32,
    /// The sender's scene correction (yaw, pitch, roll degrees).
    pub orientation: [f32; 3],
    pub lens: FisheyeLens,
    /// A headset's full head rotation (column-major, camera to world); replaces `pose`.
    pub head: Option<[[f32; 3]; 3]>,
    /// A headset eye's asymmetric field of view; replaces `fov_y_deg` and the target's aspect.
    pub fov: Option<Fov>,
}

/// Field-of-view angles in radians, OpenXR's convention: left and down negative.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fov {
    pub left: f32,
    pub right: f32,
    pub up: f32,
    pub down: f32,
}

impl ViewParams {
    /// Tangents of the view's edges: left, right, bottom, top.
    pub fn tangents(&self, aspect: f32) -> [f32; 4] {
        match self.fov {
            Some(f) => [f.left.tan(), f.right.tan(), f.down.tan(), f.up.tan()],
            None => {
                let t = (self.fov_y_deg.to_radians() / 2.0).tan();
                [-t * aspect, t * aspect, -t, t]
            }
        }
    }

    /// Projection, orientation and lens as the sender's hello gives them.
    pub fn with_hello(mut self, hello: &StreamHello) -> Self {
        self.projection = hello.projection;
        self.orientation = hello.orientation_cdeg.map(|c| c as f32 / 100.0);
        self.lens = FisheyeLens::from_wire(hello.lens);
        self
    }

    /// Camera-to-video rotation: the head pose, then the scene correction.
    pub fn rotation(&self) -> [[f32; 3]; 3] {
        let [y, p, r] = self.orientation;
        let head = self.head.unwrap_or_else(|| self.pose.rotation());
        mat_mul(orientation(y, p, r), head)
    }
}

impl Default for ViewParams {
    fn default() -> Self {
        Self {
            pose: Pose::default(),
            fov_y_deg: 90.0,
            projection: Projection::EquirectMono,
            eye: 0,
            orientation: [0.0; 3],
            lens: FisheyeLens::default(),
            head: None,
            fov: None,
        }
    }
}

/// What the renderer needs of a device: immediates (push constants) for the view parameters.
/// Not a uniform buffer: lavapipe (Mesa 22.3) specialises a shader on uniform values used in
/// branches and compiled, and leaked, a variant at every draw (issue 11: 7–15 MB/s, and 1–4
/// headset fps in Monado). Not a storage buffer either: reading it per pixel made lavapipe 3×
/// slower. Every Vulkan, Metal and D3D12 device has immediates. What the shader branches on is a
/// pipeline constant (see `Renderer::new`).
pub const DEVICE_FEATURES: wgpu::Features = wgpu::Features::IMMEDIATES;

/// `base` with room for the view parameters as immediates.
pub fn device_limits(base: wgpu::Limits) -> wgpu::Limits {
    wgpu::Limits {
        max_immediate_size: base
            .max_immediate_size
            .max(std::mem::size_of::<ViewUniform>() as u32),
        ..base
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct ViewUniform {
    rot: [[f32; 4]; 3],
    tangents: [f32; 4],
    projection: u32,
    eye: u32,
    /// 1: the target encodes to sRGB itself, so the shader writes linear values.
    linear_out: u32,
    _pad: u32,
    /// Dual fisheye: lens field of view (radians), circle centre x, y, radius.
    lens: [f32; 4],
}

impl ViewUniform {
    fn new(v: &ViewParams, aspect: f32, srgb_target: bool) -> Self {
        let r = v.rotation();
        Self {
            rot: r.map(|c| [c[0], c[1], c[2], 0.0]),
            tangents: v.tangents(aspect),
            projection: match v.projection {
                Projection::EquirectMono => 0,
                Projection::EquirectStereoTopBottom => 1,
                Projection::DualFisheye => 2,
            },
            eye: v.eye,
            linear_out: srgb_target as u32,
            _pad: 0,
            lens: [
                v.lens.fov_deg.to_radians(),
                v.lens.centre[0],
                v.lens.centre[1],
                v.lens.radius,
            ],
        }
    }
}

/// Adapter, device and queue.
pub struct Gpu {
    pub instance: wgpu::Instance,
    pub adapter: wgpu::Adapter,
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
}

impl Gpu {
    /// A device with no window: a real GPU when there is one, else lavapipe (software Vulkan).
    pub fn headless() -> Result<Self, RenderError> {
        let instance = wgpu::Instance::new(default_instance_descriptor());
        Self::with_instance(instance, None)
    }

    pub fn with_instance(
        instance: wgpu::Instance,
        surface: Option<&wgpu::Surface<'_>>,
    ) -> Result<Self, RenderError> {
        let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            force_fallback_adapter: false,
            compatible_surface: surface,
            ..Default::default()
        }))
        .map_err(|e| RenderError::NoAdapter(e.to_string()))?;
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("inclubit"),
            required_features: DEVICE_FEATURES,
            required_limits: device_limits(
                wgpu::Limits::downlevel_defaults().using_resolution(adapter.limits()),
            ),
            ..Default::default()
        }))
        .map_err(|e| RenderError::Device(e.to_string()))?;
        Ok(Self {
            instance,
            adapter,
            device,
            queue,
        })
    }

    pub fn adapter_name(&self) -> String {
        let i = self.adapter.get_info();
        format!("{} ({:?})", i.name, i.backend)
    }
}

/// Vulkan (and the native APIs of other systems) unless WGPU_BACKEND says otherwise. GL is left
/// out by default: without a display it fails noisily, and lavapipe covers machines with no GPU.
pub fn default_instance_descriptor() -> wgpu::InstanceDescriptor {
    let mut d = wgpu::InstanceDescriptor::new_without_display_handle();
    d.backends = wgpu::Backends::PRIMARY;
    // Debug builds default to DEBUG, which embeds the WGSL source in the SPIR-V (OpSource WGSL):
    // older Vulkan validation layers (Debian 12's) reject that source language, so a debug
    // build printed validation errors for a valid shader. WGPU_DEBUG=1 still turns it on.
    if std::env::var_os("WGPU_DEBUG").is_none() {
        d.flags.remove(wgpu::InstanceFlags::DEBUG);
    }
    d.with_env()
}

struct VideoTextures {
    size: (u32, u32),
    planes: [wgpu::Texture; 3],
    bind_group: wgpu::BindGroup,
}

pub struct Renderer {
    /// By projection: equirect mono, stereo top-bottom, dual fisheye.
    pipelines: [wgpu::RenderPipeline; 3],
    layout: wgpu::BindGroupLayout,
    sampler: wgpu::Sampler,
    video: Option<VideoTextures>,
    srgb_target: bool,
}

impl Renderer {
    pub fn new(device: &wgpu::Device, format: wgpu::TextureFormat) -> Self {
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("equirect"),
            source: wgpu::ShaderSource::Wgsl(SHADER.into()),
        });
        let tex = |binding| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::FRAGMENT,
            ty: wgpu::BindingType::Texture {
                sample_type: wgpu::TextureSampleType::Float { filterable: true },
                view_dimension: wgpu::TextureViewDimension::D2,
                multisampled: false,
            },
            count: None,
        };
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("equirect"),
            entries: &[
                tex(1),
                tex(2),
                tex(3),
                wgpu::BindGroupLayoutEntry {
                    binding: 4,
                    visibility: wgpu::ShaderStages::FRAGMENT,
                    ty: wgpu::BindingType::Sampler(wgpu::SamplerBindingType::Filtering),
                    count: None,
                },
            ],
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("equirect"),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: std::mem::size_of::<ViewUniform>() as u32,
        });
        // One pipeline per projection, with projection and output encoding as pipeline
        // constants: the shader is specialised (no per-pixel branch on them), which software
        // rendering needs (lavapipe drew a 1280×720 frame in 50 ms without, ~12 ms with).
        let linear_out = f64::from(u8::from(format.is_srgb()));
        let pipelines = [0.0, 1.0, 2.0].map(|projection| {
            let constants = [("PROJECTION", projection), ("LINEAR_OUT", linear_out)];
            device.create_render_pipeline(&wgpu::RenderPipelineDescriptor {
                label: Some("equirect"),
                layout: Some(&pipeline_layout),
                vertex: wgpu::VertexState {
                    module: &module,
                    entry_point: Some("vs_main"),
                    compilation_options: Default::default(),
                    buffers: &[],
                },
                primitive: wgpu::PrimitiveState::default(),
                depth_stencil: None,
                multisample: wgpu::MultisampleState::default(),
                fragment: Some(wgpu::FragmentState {
                    module: &module,
                    entry_point: Some("fs_main"),
                    compilation_options: wgpu::PipelineCompilationOptions {
                        constants: &constants,
                        ..Default::default()
                    },
                    targets: &[Some(format.into())],
                }),
                multiview_mask: None,
                cache: None,
            })
        });
        let sampler = device.create_sampler(&wgpu::SamplerDescriptor {
            label: Some("video"),
            // Longitude wraps around; latitude stops at the poles.
            address_mode_u: wgpu::AddressMode::Repeat,
            address_mode_v: wgpu::AddressMode::ClampToEdge,
            mag_filter: wgpu::FilterMode::Linear,
            min_filter: wgpu::FilterMode::Linear,
            ..Default::default()
        });

        Self {
            pipelines,
            layout,
            sampler,
            video: None,
            srgb_target: format.is_srgb(),
        }
    }

    pub fn has_video(&self) -> bool {
        self.video.is_some()
    }

    /// Uploads a picture's three planes (textures are re-made when the size changes).
    pub fn upload(&mut self, device: &wgpu::Device, queue: &wgpu::Queue, pic: &I420) {
        if self.video.as_ref().map(|v| v.size) != Some((pic.width, pic.height)) {
            self.video = Some(self.make_textures(device, pic));
        }
        let Some(video) = &self.video else { return };
        for (i, tex) in video.planes.iter().enumerate() {
            let (w, h) = pic.plane_size(i);
            queue.write_texture(
                wgpu::TexelCopyTextureInfo {
                    texture: tex,
                    mip_level: 0,
                    origin: wgpu::Origin3d::ZERO,
                    aspect: wgpu::TextureAspect::All,
                },
                &pic.planes[i],
                wgpu::TexelCopyBufferLayout {
                    offset: 0,
                    bytes_per_row: Some(pic.strides[i] as u32),
                    rows_per_image: Some(h),
                },
                wgpu::Extent3d {
                    width: w,
                    height: h,
                    depth_or_array_layers: 1,
                },
            );
        }
    }

    fn make_textures(&self, device: &wgpu::Device, pic: &I420) -> VideoTextures {
        let planes = [0, 1, 2].map(|i| {
            let (w, h) = pic.plane_size(i);
            device.create_texture(&wgpu::TextureDescriptor {
                label: Some(["y", "u", "v"][i]),
                size: wgpu::Extent3d {
                    width: w,
                    height: h,
                    depth_or_array_layers: 1,
                },
                mip_level_count: 1,
                sample_count: 1,
                dimension: wgpu::TextureDimension::D2,
                format: wgpu::TextureFormat::R8Unorm,
                usage: wgpu::TextureUsages::TEXTURE_BINDING | wgpu::TextureUsages::COPY_DST,
                view_formats: &[],
            })
        });
        let views = planes
            .each_ref()
            .map(|t| t.create_view(&wgpu::TextureViewDescriptor::default()));
        let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("video"),
            layout: &self.layout,
            entries: &[
                wgpu::BindGroupEntry {
                    binding: 1,
                    resource: wgpu::BindingResource::TextureView(&views[0]),
                },
                wgpu::BindGroupEntry {
                    binding: 2,
                    resource: wgpu::BindingResource::TextureView(&views[1]),
                },
                wgpu::BindGroupEntry {
                    binding: 3,
                    resource: wgpu::BindingResource::TextureView(&views[2]),
                },
                wgpu::BindGroupEntry {
                    binding: 4,
                    resource: wgpu::BindingResource::Sampler(&self.sampler),
                },
            ],
        });
        VideoTextures {
            size: (pic.width, pic.height),
            planes,
            bind_group,
        }
    }

    /// Records a draw of the current video into `target` (black until a picture is uploaded).
    pub fn draw(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        target: &wgpu::TextureView,
        target_size: (u32, u32),
        view: &ViewParams,
    ) {
        let aspect = target_size.0 as f32 / target_size.1.max(1) as f32;
        let params = ViewUniform::new(view, aspect, self.srgb_target);
        let mut pass = encoder.begin_render_pass(&wgpu::RenderPassDescriptor {
            label: Some("equirect"),
            color_attachments: &[Some(wgpu::RenderPassColorAttachment {
                view: target,
                depth_slice: None,
                resolve_target: None,
                ops: wgpu::Operations {
                    load: wgpu::LoadOp::Clear(wgpu::Color::BLACK),
                    store: wgpu::StoreOp::Store,
                },
            })],
            ..Default::default()
        });
        if let Some(video) = &self.video {
            pass.set_pipeline(&self.pipelines[(params.projection as usize).min(2)]);
            pass.set_immediates(0, bytemuck::bytes_of(&params));
            pass.set_bind_group(0, &video.bind_group, &[]);
            pass.draw(0..3, 0..1);
        }
    }
}

/// Offscreen rendering with read-back: `--headless`, tests and benchmarks.
pub struct Offscreen {
    pub gpu: Gpu,
    renderer: Renderer,
    target: wgpu::Texture,
    readback: wgpu::Buffer,
    size: (u32, u32),
    padded_row: u32,
}

pub const OFFSCREEN_FORMAT: wgpu::TextureFormat = wgpu::TextureFormat::Rgba8Unorm;

impl Offscreen {
    pub fn new(width: u32, height: u32) -> Result<Self, RenderError> {
        Self::with_gpu(Gpu::headless()?, width, height)
    }

    pub fn with_gpu(gpu: Gpu, width: u32, height: u32) -> Result<Self, RenderError> {
        Self::with_format(gpu, width, height, OFFSCREEN_FORMAT)
    }

    /// An offscreen target of an 8-bit RGBA `format`: `Rgba8UnormSrgb` stands in for a
    /// headset's sRGB swapchain (the bytes read back are what the runtime would get).
    pub fn with_format(
        gpu: Gpu,
        width: u32,
        height: u32,
        format: wgpu::TextureFormat,
    ) -> Result<Self, RenderError> {
        let renderer = Renderer::new(&gpu.device, format);
        let target = gpu.device.create_texture(&wgpu::TextureDescriptor {
            label: Some("offscreen"),
            size: wgpu::Extent3d {
                width,
                height,
                depth_or_array_layers: 1,
            },
            mip_level_count: 1,
            sample_count: 1,
            dimension: wgpu::TextureDimension::D2,
            format,
            usage: wgpu::TextureUsages::RENDER_ATTACHMENT | wgpu::TextureUsages::COPY_SRC,
            view_formats: &[],
        });
        let padded_row = (width * 4).div_ceil(wgpu::COPY_BYTES_PER_ROW_ALIGNMENT)
            * wgpu::COPY_BYTES_PER_ROW_ALIGNMENT;
        let readback = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: padded_row as u64 * height as u64,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Ok(Self {
            gpu,
            renderer,
            target,
            readback,
            size: (width, height),
            padded_row,
        })
    }

    pub fn size(&self) -> (u32, u32) {
        self.size
    }

    /// The adapter rendering (e.g. "llvmpipe" for lavapipe).
    pub fn adapter_name(&self) -> String {
        self.gpu.adapter_name()
    }

    pub fn upload(&mut self, pic: &I420) {
        self.renderer.upload(&self.gpu.device, &self.gpu.queue, pic);
    }

    /// Renders and waits for the GPU to finish.
    pub fn render(&mut self, view: &ViewParams) -> Result<(), RenderError> {
        self.render_inner(view, false)
    }

    /// Renders and reads back tightly packed RGBA rows.
    pub fn render_rgba(&mut self, view: &ViewParams) -> Result<Vec<u8>, RenderError> {
        self.render_inner(view, true)?;
        let (w, h) = self.size;
        let slice = self.readback.slice(..);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.wait()?;
        rx.recv_timeout(Duration::from_secs(30))
            .map_err(|e| RenderError::Readback(e.to_string()))?
            .map_err(|e| RenderError::Readback(e.to_string()))?;
        let mut out = Vec::with_capacity((w * h * 4) as usize);
        {
            let data = slice
                .get_mapped_range()
                .map_err(|e| RenderError::Readback(e.to_string()))?;
            for row in 0..h as usize {
                out.extend_from_slice(&data[row * self.padded_row as usize..][..(w * 4) as usize]);
            }
        }
        self.readback.unmap();
        Ok(out)
    }

    fn render_inner(&mut self, view: &ViewParams, copy: bool) -> Result<(), RenderError> {
        let device = &self.gpu.device;
        let mut encoder = device.create_command_encoder(&Default::default());
        let target = self.target.create_view(&Default::default());
        self.renderer.draw(&mut encoder, &target, self.size, view);
        if copy {
            encoder.copy_texture_to_buffer(
                self.target.as_image_copy(),
                wgpu::TexelCopyBufferInfo {
                    buffer: &self.readback,
                    layout: wgpu::TexelCopyBufferLayout {
                        offset: 0,
                        bytes_per_row: Some(self.padded_row),
                        rows_per_image: Some(self.size.1),
                    },
                },
                wgpu::Extent3d {
                    width: self.size.0,
                    height: self.size.1,
                    depth_or_array_layers: 1,
                },
            );
        }
        self.gpu.queue.submit([encoder.finish()]);
        self.wait()
    }

    fn wait(&self) -> Result<(), RenderError> {
        self.gpu
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map(|_| ())
            .map_err(|e| RenderError::Device(e.to_string()))
    }
}

/// The RGB at pixel (x, y) of tightly packed RGBA rows of width `w`.
pub fn rgba_at(rgba: &[u8], w: u32, x: u32, y: u32) -> [u8; 3] {
    let i = ((y * w + x) * 4) as usize;
    [rgba[i], rgba[i + 1], rgba[i + 2]]
}

#[cfg(test)]
mod tests {
    #[test]
    fn shader_validates_with_naga() {
        let module = naga::front::wgsl::parse_str(super::SHADER).expect("WGSL parses");
        naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::IMMEDIATES,
        )
        .validate(&module)
        .expect("WGSL validates");
    }
}
