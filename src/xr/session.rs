//! The headset: an OpenXR session rendering the latest decoded picture to both eyes at the
//! runtime's rate. Each frame waits on the runtime (xrWaitFrame), locates the eyes at the
//! predicted display time and draws them; the video only swaps in when a newer picture is
//! there, so head motion never waits for the network or the decoder.

use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::time::Duration;

use openxr as xr;

use super::lifecycle::{Action, End, Lifecycle, SessionState};
use super::{pose, vulkan, XrUnavailable};
use crate::pipeline::view::FrameSlot;
use crate::render::{Fov, Renderer, ViewParams};

const VIEW_TYPE: xr::ViewConfigurationType = xr::ViewConfigurationType::PRIMARY_STEREO;

#[derive(Debug, thiserror::Error)]
pub enum XrError {
    #[error(transparent)]
    Unavailable(#[from] XrUnavailable),
    #[error("the headset's Vulkan device: {0}")]
    Vulkan(String),
    #[error("OpenXR: {0}")]
    Runtime(String),
    #[error("the OpenXR runtime went away (instance lost); restart it and run view again")]
    InstanceLost,
    #[error("the OpenXR runtime lost the headset session (loss pending)")]
    SessionLost,
    #[error("the OpenXR runtime allows no more sessions (another application holds the headset?)")]
    Busy,
}

impl XrError {
    pub fn from_xr(r: xr::sys::Result) -> Self {
        match r {
            xr::sys::Result::ERROR_INSTANCE_LOST => Self::InstanceLost,
            xr::sys::Result::ERROR_SESSION_LOST => Self::SessionLost,
            xr::sys::Result::ERROR_LIMIT_REACHED => Self::Busy,
            r => Self::Runtime(r.to_string()),
        }
    }
}

/// What the viewer learned of the headset, for its start-up line.
#[derive(Debug, Clone)]
pub struct Headset {
    pub runtime: String,
    pub system: String,
    pub eye_size: (u32, u32),
    pub format: wgpu::TextureFormat,
}

struct Eye {
    swapchain: xr::Swapchain<xr::Vulkan>,
    targets: Vec<wgpu::TextureView>,
    // Kept alive with their views; the runtime owns the images.
    _textures: Vec<wgpu::Texture>,
    size: (u32, u32),
}

/// sRGB first: the runtime then composites correctly, and the shader writes linear values.
const FORMATS: [(u32, wgpu::TextureFormat); 4] = [
    (43, wgpu::TextureFormat::Rgba8UnormSrgb), // VK_FORMAT_R8G8B8A8_SRGB
    (50, wgpu::TextureFormat::Bgra8UnormSrgb), // VK_FORMAT_B8G8R8A8_SRGB
    (37, wgpu::TextureFormat::Rgba8Unorm),     // VK_FORMAT_R8G8B8A8_UNORM
    (44, wgpu::TextureFormat::Bgra8Unorm),     // VK_FORMAT_B8G8R8A8_UNORM
];

fn session_state(s: xr::SessionState) -> Option<SessionState> {
    Some(match s {
        xr::SessionState::IDLE => SessionState::Idle,
        xr::SessionState::READY => SessionState::Ready,
        xr::SessionState::SYNCHRONIZED => SessionState::Synchronized,
        xr::SessionState::VISIBLE => SessionState::Visible,
        xr::SessionState::FOCUSED => SessionState::Focused,
        xr::SessionState::STOPPING => SessionState::Stopping,
        xr::SessionState::LOSS_PENDING => SessionState::LossPending,
        xr::SessionState::EXITING => SessionState::Exiting,
        _ => return None,
    })
}

/// The runtime's recommended eye size scaled, within what it allows.
fn eye_size(v: &xr::ViewConfigurationView, scale: f32) -> (u32, u32) {
    let side = |rec: u32, max: u32| ((rec as f32 * scale).round() as u32).clamp(1, max.max(1));
    (
        side(v.recommended_image_rect_width, v.max_image_rect_width),
        side(v.recommended_image_rect_height, v.max_image_rect_height),
    )
}

/// The display's own period: the shortest the runtime has reported once the session settled.
/// Runtimes stretch the period they report to a slow app (Monado did, 1 fps on a 20 Hz display),
/// and counting against the stretched one hid most missed frames; the first frames are left out
/// (Monado's null compositor reports 16 ms for four frames, then its 50 ms).
#[derive(Debug, Default)]
struct NominalPeriod {
    seen: u32,
    shortest: Option<i64>,
}

/// Frames whose reported period is not yet the display's.
const SETTLING_FRAMES: u32 = 10;

impl NominalPeriod {
    fn observe(&mut self, reported: xr::Duration) -> xr::Duration {
        let p = reported.as_nanos();
        self.seen = self.seen.saturating_add(1);
        if p > 0 && self.seen > SETTLING_FRAMES {
            self.shortest = Some(self.shortest.map_or(p, |n| n.min(p)));
        }
        xr::Duration::from_nanos(self.shortest.unwrap_or(p))
    }
}

/// Display periods between two frames' predicted display times that had no frame of ours.
fn missed_periods(prev: xr::Time, now: xr::Time, period: xr::Duration) -> u64 {
    let (gap, p) = (now.as_nanos() - prev.as_nanos(), period.as_nanos());
    if p <= 0 || gap <= 0 {
        return 0;
    }
    ((gap + p / 2) / p).saturating_sub(1) as u64
}

/// Runs the headset on this thread until the runtime or the stream ends it. `started` hears
/// about the headset once the session exists; `recentre` turns the scene to face the head.
/// `eye_scale` sizes the eye images against the runtime's recommendation.
pub fn run(
    slot: FrameSlot,
    recentre: &Receiver<()>,
    eye_scale: f32,
    started: impl FnOnce(&Headset),
) -> Result<(), XrError> {
    // SAFETY: loads the system's OpenXR loader, a library made to be loaded this way.
    let entry = unsafe { xr::Entry::load(&()) }.map_err(|_| XrUnavailable::NoRuntime)?;
    let (instance, system, runtime, system_name) = super::open(&entry)?;
    let (gpu, create_info) = vulkan::create(&instance, system)?;
    // SAFETY: the create info names the instance and device made for this system above.
    let (session, mut waiter, mut stream) =
        unsafe { instance.create_session::<xr::Vulkan>(system, &create_info) }
            .map_err(XrError::from_xr)?;
    let formats = session
        .enumerate_swapchain_formats()
        .map_err(XrError::from_xr)?;
    let (vk_format, format) = FORMATS
        .into_iter()
        .find(|(f, _)| formats.contains(f))
        .ok_or_else(|| XrError::Runtime("no 8-bit RGBA swapchain format".into()))?;
    let views = instance
        .enumerate_view_configuration_views(system, VIEW_TYPE)
        .map_err(XrError::from_xr)?;
    let mut eyes = Vec::new();
    for v in &views {
        let size = eye_size(v, eye_scale);
        let swapchain = session
            .create_swapchain(&xr::SwapchainCreateInfo {
                create_flags: xr::SwapchainCreateFlags::EMPTY,
                usage_flags: xr::SwapchainUsageFlags::COLOR_ATTACHMENT
                    | xr::SwapchainUsageFlags::SAMPLED,
                format: vk_format,
                sample_count: 1,
                width: size.0,
                height: size.1,
                face_count: 1,
                array_size: 1,
                mip_count: 1,
            })
            .map_err(XrError::from_xr)?;
        let textures = swapchain
            .enumerate_images()
            .map_err(XrError::from_xr)?
            .into_iter()
            .map(|img| vulkan::wrap_image(&gpu.device, img, format, size))
            .collect::<Result<Vec<_>, _>>()?;
        eyes.push(Eye {
            swapchain,
            targets: textures
                .iter()
                .map(|t| t.create_view(&Default::default()))
                .collect(),
            _textures: textures,
            size,
        });
    }
    let mut renderer = Renderer::new(&gpu.device, format);
    let mut origin = xr::Posef::IDENTITY;
    let mut local = session
        .create_reference_space(xr::ReferenceSpaceType::LOCAL, origin)
        .map_err(XrError::from_xr)?;
    let head_space = session
        .create_reference_space(xr::ReferenceSpaceType::VIEW, xr::Posef::IDENTITY)
        .map_err(XrError::from_xr)?;
    started(&Headset {
        runtime,
        system: system_name,
        eye_size: eyes.first().map_or((0, 0), |e| e.size),
        format,
    });

    let mut life = Lifecycle::default();
    let mut events = xr::EventDataBuffer::new();
    let mut shown: Option<u64> = None;
    let mut last_time: Option<xr::Time> = None;
    let mut nominal = NominalPeriod::default();
    let end = 'frames: loop {
        let mut actions = Vec::new();
        loop {
            match instance.poll_event(&mut events) {
                Ok(Some(xr::Event::SessionStateChanged(e))) if e.session() == session.as_raw() => {
                    tracing::debug!(state = ?e.state(), "XR session state");
                    actions.extend(session_state(e.state()).and_then(|s| life.on_state(s)));
                }
                Ok(Some(xr::Event::InstanceLossPending(_))) => {
                    actions.extend(life.on_instance_loss())
                }
                Ok(Some(xr::Event::ReferenceSpaceChangePending(_))) => {
                    tracing::debug!("the runtime recentred the reference space")
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(xr::sys::Result::ERROR_INSTANCE_LOST) => {
                    actions.extend(life.on_instance_loss());
                    break;
                }
                Err(e) => return Err(XrError::from_xr(e)),
            }
        }
        if slot.closed.load(Ordering::Relaxed) {
            actions.extend(life.request_exit());
        }
        for a in actions {
            let r = match a {
                Action::Begin => session.begin(VIEW_TYPE).map(|_| ()),
                Action::End => session.end().map(|_| ()),
                Action::RequestExit => session.request_exit(),
                Action::Exit(end) => break 'frames end,
            };
            match r {
                Ok(()) => {}
                Err(xr::sys::Result::ERROR_INSTANCE_LOST) => break 'frames End::InstanceLost,
                Err(e) => return Err(XrError::from_xr(e)),
            }
        }
        if recentre.try_recv().is_ok() {
            if let Some(t) = last_time {
                let head = head_space.locate(&local, t).map_err(XrError::from_xr)?;
                if head
                    .location_flags
                    .contains(xr::SpaceLocationFlags::ORIENTATION_VALID)
                {
                    origin = pose::compose(origin, pose::facing(head.pose));
                    local = session
                        .create_reference_space(xr::ReferenceSpaceType::LOCAL, origin)
                        .map_err(XrError::from_xr)?;
                    tracing::info!("recentred");
                }
            }
        }
        if !life.running() {
            // Between sessions the runtime only talks through events (OpenXR has no blocking
            // wait for them): look again in 10 ms, or at once when the stream ends.
            slot.wait_closed(Duration::from_millis(10));
            continue;
        }
        let frame = match waiter.wait() {
            Ok(f) => f,
            Err(xr::sys::Result::ERROR_INSTANCE_LOST) => break End::InstanceLost,
            Err(e) => return Err(XrError::from_xr(e)),
        };
        stream.begin().map_err(XrError::from_xr)?;
        let time = frame.predicted_display_time;
        let period = nominal.observe(frame.predicted_display_period);
        let missed = last_time.map_or(0, |t| missed_periods(t, time, period));
        last_time = Some(time);
        if let Ok(mut m) = slot.metrics.lock() {
            m.headset
                .get_or_insert_with(Default::default)
                .record(std::time::Instant::now(), 0);
            m.headset_missed += missed;
        }
        if !frame.should_render || !life.visible() {
            stream
                .end(time, xr::EnvironmentBlendMode::OPAQUE, &[])
                .map_err(XrError::from_xr)?;
            continue;
        }
        let (_, located) = session
            .locate_views(VIEW_TYPE, time, &local)
            .map_err(XrError::from_xr)?;
        if let Some(latest) = slot.latest_after(shown) {
            renderer.upload(&gpu.device, &gpu.queue, &latest.picture);
            shown = Some(latest.seq);
            if let Ok(mut m) = slot.metrics.lock() {
                m.latency_us
                    .record(crate::clock::now_us().saturating_sub(latest.capture_us));
            }
        }
        let hello = slot.hello.lock().ok().and_then(|h| h.clone());
        for (i, (eye, view)) in eyes.iter_mut().zip(&located).enumerate() {
            let index = eye.swapchain.acquire_image().map_err(XrError::from_xr)?;
            eye.swapchain
                .wait_image(xr::Duration::INFINITE)
                .map_err(XrError::from_xr)?;
            let mut params = ViewParams {
                head: Some(pose::matrix(view.pose.orientation)),
                fov: Some(Fov {
                    left: view.fov.angle_left,
                    right: view.fov.angle_right,
                    up: view.fov.angle_up,
                    down: view.fov.angle_down,
                }),
                eye: i as u32,
                ..Default::default()
            };
            if let Some(h) = &hello {
                params = params.with_hello(h);
            }
            // One submission per eye: each draw writes the view uniform before it.
            let mut encoder = gpu.device.create_command_encoder(&Default::default());
            renderer.draw(
                &mut encoder,
                &eye.targets[index as usize],
                eye.size,
                &params,
            );
            gpu.queue.submit([encoder.finish()]);
            eye.swapchain.release_image().map_err(XrError::from_xr)?;
        }
        let projection: Vec<_> = eyes
            .iter()
            .zip(&located)
            .map(|(eye, view)| {
                xr::CompositionLayerProjectionView::new()
                    .pose(view.pose)
                    .fov(view.fov)
                    .sub_image(
                        xr::SwapchainSubImage::new()
                            .swapchain(&eye.swapchain)
                            .image_rect(xr::Rect2Di {
                                offset: xr::Offset2Di { x: 0, y: 0 },
                                extent: xr::Extent2Di {
                                    width: eye.size.0 as i32,
                                    height: eye.size.1 as i32,
                                },
                            }),
                    )
            })
            .collect();
        let layer = xr::CompositionLayerProjection::new()
            .space(&local)
            .views(&projection);
        match stream.end(time, xr::EnvironmentBlendMode::OPAQUE, &[&layer]) {
            Ok(()) => {}
            Err(xr::sys::Result::ERROR_INSTANCE_LOST) => break End::InstanceLost,
            Err(e) => return Err(XrError::from_xr(e)),
        }
    };
    // The GPU finishes with the runtime's images before they go; the session goes before the
    // wgpu device (whose VkDevice the runtime's swapchains live on).
    let _ = gpu.device.poll(wgpu::PollType::wait_indefinitely());
    drop(eyes);
    drop((local, head_space, stream, waiter, session));
    drop(renderer);
    drop(gpu);
    match end {
        End::Clean => Ok(()),
        End::SessionLost => Err(XrError::SessionLost),
        End::InstanceLost => Err(XrError::InstanceLost),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eye_sizes_scale_within_the_runtimes_limits() {
        let v = xr::ViewConfigurationView {
            recommended_image_rect_width: 1832,
            recommended_image_rect_height: 1920,
            max_image_rect_width: 2048,
            max_image_rect_height: 2048,
            recommended_swapchain_sample_count: 1,
            max_swapchain_sample_count: 1,
        };
        assert_eq!(eye_size(&v, 1.0), (1832, 1920));
        assert_eq!(eye_size(&v, 0.5), (916, 960));
        assert_eq!(eye_size(&v, 2.0), (2048, 2048));
    }

    #[test]
    fn missed_periods_count_display_periods_without_a_frame() {
        let t = |ms: i64| xr::Time::from_nanos(ms * 1_000_000);
        let p = xr::Duration::from_nanos(11_111_111);
        assert_eq!(missed_periods(t(1000), t(1011), p), 0);
        assert_eq!(missed_periods(t(1000), t(1022), p), 1);
        assert_eq!(missed_periods(t(1000), t(1044), p), 3);
        assert_eq!(missed_periods(t(1000), t(1000), p), 0);
        assert_eq!(
            missed_periods(t(1000), t(1011), xr::Duration::from_nanos(0)),
            0
        );
    }

    #[test]
    fn missed_periods_count_against_the_nominal_period_not_a_stretched_one() {
        let t = |ms: i64| xr::Time::from_nanos(ms * 1_000_000);
        let ms = |ms: i64| xr::Duration::from_nanos(ms * 1_000_000);
        let mut nominal = NominalPeriod::default();
        // Start-up reports (Monado: 16 ms) do not set the nominal period.
        for _ in 0..4 {
            assert_eq!(nominal.observe(ms(16)), ms(16));
        }
        for _ in 4..SETTLING_FRAMES + 5 {
            nominal.observe(ms(50));
        }
        assert_eq!(missed_periods(t(0), t(50), nominal.observe(ms(50))), 0);
        // A slow app: frames a second apart, the runtime now reporting a 1 s period.
        let p = nominal.observe(ms(1000));
        assert_eq!(p, ms(50));
        assert_eq!(missed_periods(t(0), t(1000), p), 19);
        assert_eq!(nominal.observe(xr::Duration::from_nanos(0)), ms(50));
    }
}
