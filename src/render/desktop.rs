//! The desktop window (winit): drag to look, wheel to zoom, `R` recentre, `F` fullscreen, `Esc`
//! quit. It renders at the display's rate from the latest decoded picture, so looking around
//! never waits for video.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use winit::application::ApplicationHandler;
use winit::dpi::{PhysicalPosition, PhysicalSize};
use winit::event::{ElementState, MouseButton, MouseScrollDelta, WindowEvent};
use winit::event_loop::{ActiveEventLoop, ControlFlow, EventLoop};
use winit::keyboard::{Key, NamedKey};
use winit::window::{Fullscreen, Window, WindowId};

use super::{Gpu, RenderError, Renderer, ViewParams};
use crate::pipeline::view::FrameSlot;
use crate::projection::Pose;

/// True when a window can be opened (an X11 or Wayland display is set).
pub fn display_available() -> bool {
    cfg!(any(target_os = "windows", target_os = "macos"))
        || std::env::var_os("DISPLAY").is_some()
        || std::env::var_os("WAYLAND_DISPLAY").is_some()
}

/// Mouse-look state, independent of video.
#[derive(Debug, Clone, Copy)]
pub struct Look {
    pub pose: Pose,
    pub fov_y_deg: f32,
}

impl Default for Look {
    fn default() -> Self {
        Self {
            pose: Pose::default(),
            fov_y_deg: 90.0,
        }
    }
}

impl Look {
    /// Dragging by (dx, dy) pixels in a window `height` pixels tall moves the scene with the
    /// cursor: the angle turned matches the angle the cursor crossed.
    pub fn drag(&mut self, dx: f64, dy: f64, height: u32) {
        let deg_per_px = self.fov_y_deg / height.max(1) as f32;
        let yaw = self.pose.yaw_deg - dx as f32 * deg_per_px;
        let pitch = self.pose.pitch_deg + dy as f32 * deg_per_px;
        self.pose = Pose::new(yaw.rem_euclid(360.0), pitch);
    }

    pub fn zoom(&mut self, steps: f32) {
        self.fov_y_deg = (self.fov_y_deg - steps * 5.0).clamp(30.0, 120.0);
    }
}

struct Gfx {
    gpu: Gpu,
    surface: wgpu::Surface<'static>,
    config: wgpu::SurfaceConfiguration,
    renderer: Renderer,
}

struct App {
    slot: FrameSlot,
    title: String,
    window: Option<Arc<Window>>,
    gfx: Option<Gfx>,
    look: Look,
    dragging: bool,
    cursor: Option<PhysicalPosition<f64>>,
    shown: Option<u64>,
    error: Option<RenderError>,
    title_at: Instant,
}

impl App {
    fn init(&mut self, el: &ActiveEventLoop) -> Result<(), RenderError> {
        let attrs = Window::default_attributes()
            .with_title(&self.title)
            .with_inner_size(PhysicalSize::new(1280, 720));
        let window = Arc::new(
            el.create_window(attrs)
                .map_err(|e| RenderError::Device(format!("cannot open a window: {e}")))?,
        );
        let instance = wgpu::Instance::new(super::default_instance_descriptor());
        let surface = instance
            .create_surface(window.clone())
            .map_err(|e| RenderError::Device(e.to_string()))?;
        let gpu = Gpu::with_instance(instance, Some(&surface))?;
        let size = window.inner_size();
        let mut config = surface
            .get_default_config(&gpu.adapter, size.width.max(1), size.height.max(1))
            .ok_or_else(|| RenderError::Device("the window surface is not supported".into()))?;
        // Video values are already gamma-encoded: write them to a non-sRGB format as they are.
        let caps = surface.get_capabilities(&gpu.adapter);
        if let Some(f) = caps.formats.iter().find(|f| !f.is_srgb()) {
            config.format = *f;
        }
        config.present_mode = wgpu::PresentMode::AutoVsync;
        surface.configure(&gpu.device, &config);
        let renderer = Renderer::new(&gpu.device, config.format);
        tracing::info!(adapter = %gpu.adapter_name(), "window renderer");
        self.gfx = Some(Gfx {
            gpu,
            surface,
            config,
            renderer,
        });
        self.window = Some(window);
        Ok(())
    }

    fn redraw(&mut self) {
        let (Some(gfx), Some(window)) = (&mut self.gfx, &self.window) else {
            return;
        };
        if let Some(latest) = self.slot.latest_after(self.shown) {
            gfx.renderer
                .upload(&gfx.gpu.device, &gfx.gpu.queue, &latest.picture);
            self.shown = Some(latest.seq);
            let now = crate::clock::now_us();
            if let Ok(mut m) = self.slot.metrics.lock() {
                m.latency_us.record(now.saturating_sub(latest.capture_us));
            }
        }
        let frame = match gfx.surface.get_current_texture() {
            wgpu::CurrentSurfaceTexture::Success(t)
            | wgpu::CurrentSurfaceTexture::Suboptimal(t) => t,
            wgpu::CurrentSurfaceTexture::Outdated | wgpu::CurrentSurfaceTexture::Lost => {
                gfx.surface.configure(&gfx.gpu.device, &gfx.config);
                return;
            }
            _ => return,
        };
        let view = frame.texture.create_view(&Default::default());
        let mut encoder = gfx.gpu.device.create_command_encoder(&Default::default());
        let mut params = ViewParams {
            pose: self.look.pose,
            fov_y_deg: self.look.fov_y_deg,
            ..Default::default()
        };
        if let Some(h) = self.slot.hello.lock().ok().and_then(|h| h.clone()) {
            params = params.with_hello(&h);
        }
        gfx.renderer.draw(
            &mut encoder,
            &view,
            (gfx.config.width, gfx.config.height),
            &params,
        );
        gfx.gpu.queue.submit([encoder.finish()]);
        window.pre_present_notify();
        gfx.gpu.queue.present(frame);
        if self.title_at.elapsed() >= Duration::from_secs(1) {
            self.title_at = Instant::now();
            if let Ok(mut m) = self.slot.metrics.lock() {
                let l = m.line();
                window.set_title(&format!(
                    "{} — {:.0} fps, {:.1} Mbit/s, {:.0} ms",
                    self.title, l.fps, l.bitrate_mbps, l.latency_p50_ms
                ));
            }
        }
    }
}

impl ApplicationHandler for App {
    fn resumed(&mut self, el: &ActiveEventLoop) {
        if self.window.is_none() {
            if let Err(e) = self.init(el) {
                self.error = Some(e);
                el.exit();
            }
        }
    }

    fn window_event(&mut self, el: &ActiveEventLoop, _id: WindowId, event: WindowEvent) {
        match event {
            WindowEvent::CloseRequested => el.exit(),
            WindowEvent::Resized(size) => {
                if let Some(gfx) = &mut self.gfx {
                    // Minimised windows report 0×0: keep the old configuration until restored.
                    if size.width > 0 && size.height > 0 {
                        gfx.config.width = size.width;
                        gfx.config.height = size.height;
                        gfx.surface.configure(&gfx.gpu.device, &gfx.config);
                    }
                }
            }
            WindowEvent::MouseInput {
                state,
                button: MouseButton::Left,
                ..
            } => self.dragging = state == ElementState::Pressed,
            WindowEvent::CursorMoved { position, .. } => {
                if let (true, Some(prev), Some(gfx)) = (self.dragging, self.cursor, &self.gfx) {
                    self.look
                        .drag(position.x - prev.x, position.y - prev.y, gfx.config.height);
                }
                self.cursor = Some(position);
            }
            WindowEvent::MouseWheel { delta, .. } => {
                let steps = match delta {
                    MouseScrollDelta::LineDelta(_, y) => y,
                    MouseScrollDelta::PixelDelta(p) => p.y as f32 / 40.0,
                };
                self.look.zoom(steps);
            }
            WindowEvent::KeyboardInput { event, .. } if event.state == ElementState::Pressed => {
                match event.logical_key.as_ref() {
                    Key::Named(NamedKey::Escape) => el.exit(),
                    Key::Character("r") | Key::Character("R") => self.look = Look::default(),
                    Key::Character("f") | Key::Character("F") => {
                        if let Some(w) = &self.window {
                            let full = w.fullscreen().is_some();
                            w.set_fullscreen((!full).then_some(Fullscreen::Borderless(None)));
                        }
                    }
                    _ => {}
                }
            }
            WindowEvent::RedrawRequested => self.redraw(),
            _ => {}
        }
    }

    fn about_to_wait(&mut self, el: &ActiveEventLoop) {
        if self.slot.closed.load(Ordering::Relaxed) {
            el.exit();
        } else if let Some(w) = &self.window {
            w.request_redraw();
        }
    }
}

/// Runs the window on this (main) thread until it is closed or the stream ends.
pub fn run_window(slot: FrameSlot, title: &str) -> Result<(), RenderError> {
    let el = EventLoop::new().map_err(|e| RenderError::Device(format!("no display: {e}")))?;
    el.set_control_flow(ControlFlow::Poll);
    let mut app = App {
        slot,
        title: title.to_string(),
        window: None,
        gfx: None,
        look: Look::default(),
        dragging: false,
        cursor: None,
        shown: None,
        error: None,
        title_at: Instant::now(),
    };
    el.run_app(&mut app)
        .map_err(|e| RenderError::Device(e.to_string()))?;
    app.slot.close();
    match app.error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drag_turns_with_the_cursor_and_zoom_is_bounded() {
        let mut l = Look::default();
        // Dragging right by half the height at 90° fov turns left by 45°.
        l.drag(360.0, 0.0, 720);
        assert!((l.pose.yaw_deg - 315.0).abs() < 1e-3, "{:?}", l.pose);
        l.drag(0.0, 10_000.0, 720);
        assert!(l.pose.pitch_deg <= 89.9);
        for _ in 0..100 {
            l.zoom(1.0);
        }
        assert_eq!(l.fov_y_deg, 30.0);
        for _ in 0..100 {
            l.zoom(-1.0);
        }
        assert_eq!(l.fov_y_deg, 120.0);
    }
}
