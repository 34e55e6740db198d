//! Sessions, spaces, swapchains and frames: one session at a time, state kept in one place.

use std::collections::{HashMap, VecDeque};
use std::sync::{LazyLock, Mutex, MutexGuard};
use std::time::Instant;

use ash::vk::{self, Handle as _};
use openxr_sys as sys;
use openxr_sys::Handle;

use crate::control::Control;
use crate::gpu::{raw_handle, Images, Queue, Vk};
use crate::math;

pub const SWAPCHAIN_IMAGES: usize = 3;
/// Half the distance between the eyes, metres.
const HALF_IPD: f32 = 0.032;

pub enum Event {
    State(u64, sys::SessionState),
    LossPending,
}

struct Session {
    handle: u64,
    state: sys::SessionState,
    queue: Queue,
    control: Control,
    epoch: Instant,
    last_slot: Option<u64>,
    frames: u64,
    exit_asked: bool,
    records: u64,
}

struct Space {
    ty: sys::ReferenceSpaceType,
    pose: sys::Posef,
}

struct Swapchain {
    images: Images,
    next: usize,
    acquired: VecDeque<usize>,
    released: Option<usize>,
}

#[derive(Default)]
pub struct Sim {
    pub vk: Option<Vk>,
    lost: bool,
    loss_announced: bool,
    events: VecDeque<Event>,
    session: Option<Session>,
    spaces: HashMap<u64, Space>,
    swapchains: HashMap<u64, Swapchain>,
    next_handle: u64,
}

static SIM: LazyLock<Mutex<Sim>> = LazyLock::new(Default::default);
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

pub fn sim() -> MutexGuard<'static, Sim> {
    SIM.lock().unwrap_or_else(|e| e.into_inner())
}

fn xr_time(t: Instant) -> sys::Time {
    sys::Time::from_nanos(t.saturating_duration_since(*EPOCH).as_nanos() as i64 + 1_000_000_000)
}

macro_rules! check {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(r) => return r,
        }
    };
}

impl Sim {
    fn handle(&mut self) -> u64 {
        self.next_handle += 1;
        self.next_handle
    }

    fn alive(&self) -> Result<(), sys::Result> {
        if self.lost {
            Err(sys::Result::ERROR_INSTANCE_LOST)
        } else {
            Ok(())
        }
    }

    fn session(&mut self, h: sys::Session) -> Result<&mut Session, sys::Result> {
        self.alive()?;
        match &mut self.session {
            Some(s) if s.handle == h.into_raw() => Ok(s),
            _ => Err(sys::Result::ERROR_HANDLE_INVALID),
        }
    }

    fn set_state(&mut self, state: sys::SessionState) {
        if let Some(s) = &mut self.session {
            s.state = state;
            self.events.push_back(Event::State(s.handle, state));
        }
    }

    /// The test's triggers: the runtime asking to exit, or going away.
    fn triggers(&mut self) {
        let Some(s) = &mut self.session else { return };
        if s.control.flag("lose") && !self.loss_announced {
            self.loss_announced = true;
            self.events.push_back(Event::LossPending);
        }
        if s.state != sys::SessionState::LOSS_PENDING && s.control.take("lose-session") {
            // The headset is gone for a moment (unplugged, the compositor restarting): this
            // session cannot go on; a new one can.
            self.set_state(sys::SessionState::LOSS_PENDING);
            return;
        }
        let running = matches!(
            s.state,
            sys::SessionState::SYNCHRONIZED
                | sys::SessionState::VISIBLE
                | sys::SessionState::FOCUSED
        );
        if running && !s.exit_asked && s.control.flag("exit") {
            s.exit_asked = true;
            if s.state == sys::SessionState::FOCUSED {
                self.set_state(sys::SessionState::VISIBLE);
            }
            self.set_state(sys::SessionState::SYNCHRONIZED);
            self.set_state(sys::SessionState::STOPPING);
        }
    }

    /// A space's pose in the tracking origin at the current head pose.
    fn space_pose(&self, space: u64, head: sys::Posef) -> Option<sys::Posef> {
        let s = self.spaces.get(&space)?;
        Some(if s.ty == sys::ReferenceSpaceType::VIEW {
            math::compose(head, s.pose)
        } else {
            s.pose
        })
    }
}

unsafe fn two_call<T: Copy>(items: &[T], cap: u32, count: *mut u32, out: *mut T) -> sys::Result {
    if count.is_null() {
        return sys::Result::ERROR_VALIDATION_FAILURE;
    }
    *count = items.len() as u32;
    if cap == 0 {
        return sys::Result::SUCCESS;
    }
    if (cap as usize) < items.len() {
        return sys::Result::ERROR_SIZE_INSUFFICIENT;
    }
    for (i, v) in items.iter().enumerate() {
        *out.add(i) = *v;
    }
    sys::Result::SUCCESS
}

/// Walks an input structure chain for a structure of type `ty`.
unsafe fn find_in_chain(mut next: *const std::ffi::c_void, ty: sys::StructureType) -> *const u8 {
    while !next.is_null() {
        let base = &*(next as *const sys::BaseInStructure);
        if base.ty == ty {
            return next as *const u8;
        }
        next = base.next as *const _;
    }
    std::ptr::null()
}

pub unsafe extern "system" fn create_session(
    _instance: sys::Instance,
    info: *const sys::SessionCreateInfo,
    out: *mut sys::Session,
) -> sys::Result {
    let mut sim = sim();
    check!(sim.alive());
    // `busy`: another application holds the headset.
    if sim.session.is_some() || crate::mode() == "busy" {
        return sys::Result::ERROR_LIMIT_REACHED;
    }
    let binding = find_in_chain(
        (*info).next,
        sys::StructureType::GRAPHICS_BINDING_VULKAN_KHR,
    ) as *const sys::GraphicsBindingVulkanKHR;
    if binding.is_null() {
        return sys::Result::ERROR_GRAPHICS_DEVICE_INVALID;
    }
    let b = &*binding;
    let Some(vk) = sim.vk.as_mut() else {
        // Enable2 requires the runtime to have made the instance and checked requirements.
        return sys::Result::ERROR_GRAPHICS_REQUIREMENTS_CALL_MISSING;
    };
    if vk.instance.handle().as_raw() != b.instance as u64 {
        return sys::Result::ERROR_GRAPHICS_DEVICE_INVALID;
    }
    let device = vk.device_for(vk::Device::from_raw(b.device as u64));
    let queue = match Queue::new(vk, device, b.queue_family_index, b.queue_index) {
        Ok(q) => q,
        Err(_) => return sys::Result::ERROR_GRAPHICS_DEVICE_INVALID,
    };
    let handle = sim.handle();
    sim.session = Some(Session {
        handle,
        state: sys::SessionState::UNKNOWN,
        queue,
        control: Control::from_env(),
        epoch: Instant::now(),
        last_slot: None,
        frames: 0,
        exit_asked: false,
        records: 0,
    });
    sim.set_state(sys::SessionState::IDLE);
    sim.set_state(sys::SessionState::READY);
    *out = sys::Session::from_raw(handle);
    sys::Result::SUCCESS
}

pub unsafe extern "system" fn destroy_session(session: sys::Session) -> sys::Result {
    let mut sim = sim();
    if sim.session.as_ref().map(|s| s.handle) != Some(session.into_raw()) {
        return sys::Result::ERROR_HANDLE_INVALID;
    }
    if let Some(mut s) = sim.session.take() {
        s.control.log(format_args!("session destroy"));
        sim.events
            .retain(|e| !matches!(e, Event::State(h, _) if *h == s.handle));
        for (_, sc) in sim.swapchains.drain() {
            sc.images.destroy(&s.queue);
        }
        s.queue.destroy();
    }
    sim.spaces.clear();
    sys::Result::SUCCESS
}

pub unsafe extern "system" fn begin_session(
    session: sys::Session,
    info: *const sys::SessionBeginInfo,
) -> sys::Result {
    let mut sim = sim();
    let s = check!(sim.session(session));
    if (*info).primary_view_configuration_type != sys::ViewConfigurationType::PRIMARY_STEREO {
        return sys::Result::ERROR_VIEW_CONFIGURATION_TYPE_UNSUPPORTED;
    }
    if s.state != sys::SessionState::READY {
        return sys::Result::ERROR_SESSION_NOT_READY;
    }
    s.epoch = Instant::now();
    s.control.log(format_args!("session begin"));
    sim.set_state(sys::SessionState::SYNCHRONIZED);
    sys::Result::SUCCESS
}

pub unsafe extern "system" fn end_session(session: sys::Session) -> sys::Result {
    let mut sim = sim();
    let s = check!(sim.session(session));
    if s.state != sys::SessionState::STOPPING {
        return sys::Result::ERROR_SESSION_NOT_STOPPING;
    }
    s.control.log(format_args!("session end"));
    sim.set_state(sys::SessionState::IDLE);
    sim.set_state(sys::SessionState::EXITING);
    sys::Result::SUCCESS
}

pub unsafe extern "system" fn request_exit_session(session: sys::Session) -> sys::Result {
    let mut sim = sim();
    let s = check!(sim.session(session));
    match s.state {
        sys::SessionState::SYNCHRONIZED
        | sys::SessionState::VISIBLE
        | sys::SessionState::FOCUSED => {
            s.control.log(format_args!("session request-exit"));
            if s.state == sys::SessionState::FOCUSED {
                sim.set_state(sys::SessionState::VISIBLE);
            }
            if sim.session.as_ref().map(|s| s.state) == Some(sys::SessionState::VISIBLE) {
                sim.set_state(sys::SessionState::SYNCHRONIZED);
            }
            sim.set_state(sys::SessionState::STOPPING);
            sys::Result::SUCCESS
        }
        _ => sys::Result::ERROR_SESSION_NOT_RUNNING,
    }
}

pub unsafe extern "system" fn poll_event(
    _instance: sys::Instance,
    buffer: *mut sys::EventDataBuffer,
) -> sys::Result {
    let mut sim = sim();
    if sim.lost {
        return sys::Result::ERROR_INSTANCE_LOST;
    }
    sim.triggers();
    match sim.events.pop_front() {
        Some(Event::State(handle, state)) => {
            let e = buffer as *mut sys::EventDataSessionStateChanged;
            *e = sys::EventDataSessionStateChanged {
                ty: sys::StructureType::EVENT_DATA_SESSION_STATE_CHANGED,
                next: std::ptr::null(),
                session: sys::Session::from_raw(handle),
                state,
                time: xr_time(Instant::now()),
            };
            sys::Result::SUCCESS
        }
        Some(Event::LossPending) => {
            let e = buffer as *mut sys::EventDataInstanceLossPending;
            *e = sys::EventDataInstanceLossPending {
                ty: sys::StructureType::EVENT_DATA_INSTANCE_LOSS_PENDING,
                next: std::ptr::null(),
                loss_time: xr_time(Instant::now()),
            };
            // Gone from now on: every later call answers XR_ERROR_INSTANCE_LOST.
            sim.lost = true;
            sys::Result::SUCCESS
        }
        None => sys::Result::EVENT_UNAVAILABLE,
    }
}

pub unsafe extern "system" fn enumerate_view_configurations(
    _instance: sys::Instance,
    _system: sys::SystemId,
    cap: u32,
    count: *mut u32,
    out: *mut sys::ViewConfigurationType,
) -> sys::Result {
    two_call(
        &[sys::ViewConfigurationType::PRIMARY_STEREO],
        cap,
        count,
        out,
    )
}

pub unsafe extern "system" fn view_configuration_properties(
    _instance: sys::Instance,
    _system: sys::SystemId,
    ty: sys::ViewConfigurationType,
    props: *mut sys::ViewConfigurationProperties,
) -> sys::Result {
    if ty != sys::ViewConfigurationType::PRIMARY_STEREO {
        return sys::Result::ERROR_VIEW_CONFIGURATION_TYPE_UNSUPPORTED;
    }
    (*props).view_configuration_type = ty;
    (*props).fov_mutable = sys::FALSE;
    sys::Result::SUCCESS
}

pub unsafe extern "system" fn enumerate_view_configuration_views(
    _instance: sys::Instance,
    _system: sys::SystemId,
    ty: sys::ViewConfigurationType,
    cap: u32,
    count: *mut u32,
    out: *mut sys::ViewConfigurationView,
) -> sys::Result {
    if ty != sys::ViewConfigurationType::PRIMARY_STEREO {
        return sys::Result::ERROR_VIEW_CONFIGURATION_TYPE_UNSUPPORTED;
    }
    *count = 2;
    if cap == 0 {
        return sys::Result::SUCCESS;
    }
    if cap < 2 {
        return sys::Result::ERROR_SIZE_INSUFFICIENT;
    }
    let (w, h) = Control::from_env().size;
    for i in 0..2 {
        let v = &mut *out.add(i);
        v.recommended_image_rect_width = w;
        v.recommended_image_rect_height = h;
        v.max_image_rect_width = 4096;
        v.max_image_rect_height = 4096;
        v.recommended_swapchain_sample_count = 1;
        v.max_swapchain_sample_count = 1;
    }
    sys::Result::SUCCESS
}

pub unsafe extern "system" fn enumerate_blend_modes(
    _instance: sys::Instance,
    _system: sys::SystemId,
    _ty: sys::ViewConfigurationType,
    cap: u32,
    count: *mut u32,
    out: *mut sys::EnvironmentBlendMode,
) -> sys::Result {
    two_call(&[sys::EnvironmentBlendMode::OPAQUE], cap, count, out)
}

pub unsafe extern "system" fn enumerate_reference_spaces(
    session: sys::Session,
    cap: u32,
    count: *mut u32,
    out: *mut sys::ReferenceSpaceType,
) -> sys::Result {
    check!(sim().session(session).map(|_| ()));
    let types = [
        sys::ReferenceSpaceType::VIEW,
        sys::ReferenceSpaceType::LOCAL,
        sys::ReferenceSpaceType::STAGE,
    ];
    two_call(&types, cap, count, out)
}

pub unsafe extern "system" fn create_reference_space(
    session: sys::Session,
    info: *const sys::ReferenceSpaceCreateInfo,
    out: *mut sys::Space,
) -> sys::Result {
    let mut sim = sim();
    check!(sim.session(session).map(|_| ()));
    let info = &*info;
    let h = sim.handle();
    sim.spaces.insert(
        h,
        Space {
            ty: info.reference_space_type,
            pose: info.pose_in_reference_space,
        },
    );
    *out = sys::Space::from_raw(h);
    sys::Result::SUCCESS
}

pub unsafe extern "system" fn destroy_space(space: sys::Space) -> sys::Result {
    match sim().spaces.remove(&space.into_raw()) {
        Some(_) => sys::Result::SUCCESS,
        None => sys::Result::ERROR_HANDLE_INVALID,
    }
}

fn head_pose(s: &Session) -> sys::Posef {
    let [y, p, r] = s.control.head();
    math::head(y, p, r)
}

const TRACKED: u64 = 0xf; // orientation/position valid and tracked

pub unsafe extern "system" fn locate_space(
    space: sys::Space,
    base: sys::Space,
    _time: sys::Time,
    location: *mut sys::SpaceLocation,
) -> sys::Result {
    let sim = sim();
    check!(sim.alive());
    let Some(s) = &sim.session else {
        return sys::Result::ERROR_HANDLE_INVALID;
    };
    let head = head_pose(s);
    let (Some(a), Some(b)) = (
        sim.space_pose(space.into_raw(), head),
        sim.space_pose(base.into_raw(), head),
    ) else {
        return sys::Result::ERROR_HANDLE_INVALID;
    };
    (*location).location_flags = sys::SpaceLocationFlags::from_raw(TRACKED);
    (*location).pose = math::compose(math::inverse(b), a);
    sys::Result::SUCCESS
}

/// The simulated lenses: a little wider outwards than inwards, like real headsets.
fn eye_fov(eye: usize) -> sys::Fovf {
    let (inner, outer) = (45f32.to_radians(), 50f32.to_radians());
    let (left, right) = if eye == 0 {
        (-outer, inner)
    } else {
        (-inner, outer)
    };
    sys::Fovf {
        angle_left: left,
        angle_right: right,
        angle_up: 48f32.to_radians(),
        angle_down: -52f32.to_radians(),
    }
}

pub unsafe extern "system" fn locate_views(
    session: sys::Session,
    info: *const sys::ViewLocateInfo,
    state: *mut sys::ViewState,
    cap: u32,
    count: *mut u32,
    views: *mut sys::View,
) -> sys::Result {
    let mut sim = sim();
    let s = check!(sim.session(session));
    let head = head_pose(s);
    *count = 2;
    if cap == 0 {
        return sys::Result::SUCCESS;
    }
    if cap < 2 {
        return sys::Result::ERROR_SIZE_INSUFFICIENT;
    }
    let Some(space) = sim.space_pose((*info).space.into_raw(), head) else {
        return sys::Result::ERROR_HANDLE_INVALID;
    };
    (*state).view_state_flags = sys::ViewStateFlags::from_raw(TRACKED);
    for eye in 0..2 {
        let mut offset = math::identity();
        offset.position.x = if eye == 0 { -HALF_IPD } else { HALF_IPD };
        let v = &mut *views.add(eye);
        v.pose = math::compose(math::inverse(space), math::compose(head, offset));
        v.fov = eye_fov(eye);
    }
    sys::Result::SUCCESS
}

const FORMATS: [vk::Format; 4] = [
    vk::Format::R8G8B8A8_SRGB,
    vk::Format::B8G8R8A8_SRGB,
    vk::Format::R8G8B8A8_UNORM,
    vk::Format::B8G8R8A8_UNORM,
];

pub unsafe extern "system" fn enumerate_swapchain_formats(
    session: sys::Session,
    cap: u32,
    count: *mut u32,
    out: *mut i64,
) -> sys::Result {
    check!(sim().session(session).map(|_| ()));
    let formats = FORMATS.map(|f| f.as_raw() as i64);
    two_call(&formats, cap, count, out)
}

pub unsafe extern "system" fn create_swapchain(
    session: sys::Session,
    info: *const sys::SwapchainCreateInfo,
    out: *mut sys::Swapchain,
) -> sys::Result {
    let mut sim = sim();
    let s = check!(sim.session(session));
    let i = &*info;
    let format = vk::Format::from_raw(i.format as i32);
    if !FORMATS.contains(&format) {
        return sys::Result::ERROR_SWAPCHAIN_FORMAT_UNSUPPORTED;
    }
    if i.face_count != 1 || i.mip_count != 1 || i.sample_count != 1 || i.width == 0 {
        return sys::Result::ERROR_FEATURE_UNSUPPORTED;
    }
    let u = i.usage_flags;
    let mut usage = vk::ImageUsageFlags::empty();
    for (xr, v) in [
        (
            sys::SwapchainUsageFlags::COLOR_ATTACHMENT,
            vk::ImageUsageFlags::COLOR_ATTACHMENT,
        ),
        (
            sys::SwapchainUsageFlags::SAMPLED,
            vk::ImageUsageFlags::SAMPLED,
        ),
        (
            sys::SwapchainUsageFlags::TRANSFER_SRC,
            vk::ImageUsageFlags::TRANSFER_SRC,
        ),
        (
            sys::SwapchainUsageFlags::TRANSFER_DST,
            vk::ImageUsageFlags::TRANSFER_DST,
        ),
        (
            sys::SwapchainUsageFlags::UNORDERED_ACCESS,
            vk::ImageUsageFlags::STORAGE,
        ),
    ] {
        if u.contains(xr) {
            usage |= v;
        }
    }
    let flags = if u.contains(sys::SwapchainUsageFlags::MUTABLE_FORMAT) {
        vk::ImageCreateFlags::MUTABLE_FORMAT
    } else {
        vk::ImageCreateFlags::empty()
    };
    let images = match Images::new(
        &s.queue,
        format,
        (i.width, i.height),
        i.array_size.max(1),
        usage,
        flags,
        SWAPCHAIN_IMAGES,
    ) {
        Ok(im) => im,
        Err(_) => return sys::Result::ERROR_OUT_OF_MEMORY,
    };
    let h = sim.handle();
    sim.swapchains.insert(
        h,
        Swapchain {
            images,
            next: 0,
            acquired: VecDeque::new(),
            released: None,
        },
    );
    *out = sys::Swapchain::from_raw(h);
    sys::Result::SUCCESS
}

pub unsafe extern "system" fn destroy_swapchain(swapchain: sys::Swapchain) -> sys::Result {
    let mut sim = sim();
    let Some(sc) = sim.swapchains.remove(&swapchain.into_raw()) else {
        return sys::Result::ERROR_HANDLE_INVALID;
    };
    if let Some(s) = &sim.session {
        sc.images.destroy(&s.queue);
    }
    sys::Result::SUCCESS
}

pub unsafe extern "system" fn enumerate_swapchain_images(
    swapchain: sys::Swapchain,
    cap: u32,
    count: *mut u32,
    out: *mut sys::SwapchainImageBaseHeader,
) -> sys::Result {
    let sim = sim();
    check!(sim.alive());
    let Some(sc) = sim.swapchains.get(&swapchain.into_raw()) else {
        return sys::Result::ERROR_HANDLE_INVALID;
    };
    let n = sc.images.images.len();
    *count = n as u32;
    if cap == 0 {
        return sys::Result::SUCCESS;
    }
    if (cap as usize) < n {
        return sys::Result::ERROR_SIZE_INSUFFICIENT;
    }
    let out = out as *mut sys::SwapchainImageVulkanKHR;
    for (i, img) in sc.images.images.iter().enumerate() {
        (*out.add(i)).image = raw_handle(*img);
    }
    sys::Result::SUCCESS
}

pub unsafe extern "system" fn acquire_swapchain_image(
    swapchain: sys::Swapchain,
    _info: *const sys::SwapchainImageAcquireInfo,
    index: *mut u32,
) -> sys::Result {
    let mut sim = sim();
    check!(sim.alive());
    let Some(sc) = sim.swapchains.get_mut(&swapchain.into_raw()) else {
        return sys::Result::ERROR_HANDLE_INVALID;
    };
    if sc.acquired.len() == sc.images.images.len() {
        return sys::Result::ERROR_CALL_ORDER_INVALID;
    }
    let i = sc.next;
    sc.next = (sc.next + 1) % sc.images.images.len();
    sc.acquired.push_back(i);
    *index = i as u32;
    sys::Result::SUCCESS
}

pub unsafe extern "system" fn wait_swapchain_image(
    swapchain: sys::Swapchain,
    _info: *const sys::SwapchainImageWaitInfo,
) -> sys::Result {
    let sim = sim();
    check!(sim.alive());
    match sim.swapchains.get(&swapchain.into_raw()) {
        Some(sc) if !sc.acquired.is_empty() => sys::Result::SUCCESS,
        Some(_) => sys::Result::ERROR_CALL_ORDER_INVALID,
        None => sys::Result::ERROR_HANDLE_INVALID,
    }
}

pub unsafe extern "system" fn release_swapchain_image(
    swapchain: sys::Swapchain,
    _info: *const sys::SwapchainImageReleaseInfo,
) -> sys::Result {
    let mut sim = sim();
    check!(sim.alive());
    let Some(sc) = sim.swapchains.get_mut(&swapchain.into_raw()) else {
        return sys::Result::ERROR_HANDLE_INVALID;
    };
    match sc.acquired.pop_front() {
        Some(i) => {
            sc.released = Some(i);
            sys::Result::SUCCESS
        }
        None => sys::Result::ERROR_CALL_ORDER_INVALID,
    }
}

/// Paces the application at the display rate: returns at the start of the next display
/// period it has not had yet; periods it was too late for count as missed.
pub unsafe extern "system" fn wait_frame(
    session: sys::Session,
    _info: *const sys::FrameWaitInfo,
    state: *mut sys::FrameState,
) -> sys::Result {
    let (wake, period, slot, missed, render) = {
        let mut sim = sim();
        sim.triggers();
        let s = check!(sim.session(session));
        if !matches!(
            s.state,
            sys::SessionState::SYNCHRONIZED
                | sys::SessionState::VISIBLE
                | sys::SessionState::FOCUSED
                | sys::SessionState::STOPPING
        ) {
            return sys::Result::ERROR_SESSION_NOT_RUNNING;
        }
        let period = s.control.period;
        let elapsed = s.epoch.elapsed().as_nanos() as u64;
        let due = elapsed.div_ceil(period.as_nanos() as u64);
        let slot = s.last_slot.map_or(due, |l| due.max(l + 1));
        let missed = s.last_slot.map_or(0, |l| slot - l - 1);
        s.last_slot = Some(slot);
        let render = matches!(
            s.state,
            sys::SessionState::VISIBLE | sys::SessionState::FOCUSED
        );
        (s.epoch + period * slot as u32, period, slot, missed, render)
    };
    let now = Instant::now();
    if wake > now {
        std::thread::sleep(wake - now);
    }
    (*state).predicted_display_time = xr_time(wake + period);
    (*state).predicted_display_period = sys::Duration::from_nanos(period.as_nanos() as i64);
    (*state).should_render = render.into();
    let mut sim = sim();
    if let Some(s) = &mut sim.session {
        s.control
            .log(format_args!("wait {slot} missed {missed} render {render}"));
    }
    sys::Result::SUCCESS
}

pub unsafe extern "system" fn begin_frame(
    session: sys::Session,
    _info: *const sys::FrameBeginInfo,
) -> sys::Result {
    check!(sim().session(session).map(|_| ()));
    sys::Result::SUCCESS
}

pub unsafe extern "system" fn end_frame(
    session: sys::Session,
    info: *const sys::FrameEndInfo,
) -> sys::Result {
    let mut guard = sim();
    let sim = &mut *guard;
    check!(sim.session(session).map(|_| ()));
    let info = &*info;
    let mut eyes = Vec::new();
    let mut poses = String::new();
    let mut size = (0, 0);
    for l in 0..info.layer_count as usize {
        let layer = *info.layers.add(l);
        if (*layer).ty != sys::StructureType::COMPOSITION_LAYER_PROJECTION {
            continue;
        }
        let layer = &*(layer as *const sys::CompositionLayerProjection);
        for v in 0..layer.view_count as usize {
            let view = &*layer.views.add(v);
            let (yaw, pitch) = math::yaw_pitch(view.pose);
            poses.push_str(&format!(" eye{v} {yaw:.2} {pitch:.2}"));
            let Some(sc) = sim.swapchains.get(&view.sub_image.swapchain.into_raw()) else {
                return sys::Result::ERROR_HANDLE_INVALID;
            };
            let Some(index) = sc.released else {
                return sys::Result::ERROR_LAYER_INVALID;
            };
            let Some(s) = &sim.session else {
                return sys::Result::ERROR_HANDLE_INVALID;
            };
            if s.control.wants_images() {
                let r = view.sub_image.image_rect;
                let rect = vk::Rect2D {
                    offset: vk::Offset2D {
                        x: r.offset.x,
                        y: r.offset.y,
                    },
                    extent: vk::Extent2D {
                        width: r.extent.width as u32,
                        height: r.extent.height as u32,
                    },
                };
                size = (rect.extent.width, rect.extent.height);
                match sc
                    .images
                    .read(&s.queue, index, view.sub_image.image_array_index, rect)
                {
                    Ok(px) => eyes.push(px),
                    Err(_) => return sys::Result::ERROR_RUNTIME_FAILURE,
                }
            }
        }
    }
    let first_visible = {
        let Some(s) = &mut sim.session else {
            return sys::Result::ERROR_HANDLE_INVALID;
        };
        let n = s.frames;
        s.frames += 1;
        let t = info.display_time.as_nanos();
        let record = if eyes.is_empty() {
            String::new()
        } else {
            s.control.eyes(&eyes);
            s.records += 1;
            format!(" record {}", s.records - 1)
        };
        s.control.log(format_args!(
            "frame {n} display {t} layers {} size {}x{}{record}{poses}",
            info.layer_count, size.0, size.1
        ));
        n == 0 && s.state == sys::SessionState::SYNCHRONIZED && !s.exit_asked
    };
    if first_visible {
        sim.set_state(sys::SessionState::VISIBLE);
        sim.set_state(sys::SessionState::FOCUSED);
    }
    sys::Result::SUCCESS
}
