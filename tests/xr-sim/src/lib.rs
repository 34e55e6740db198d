//! A simulated OpenXR runtime for tests: a shared library the real OpenXR loader opens through a
//! manifest named by `XR_RUNTIME_JSON`. It implements the part of OpenXR the viewer uses so far
//! (instance, system, XR_KHR_vulkan_enable2, a session with its lifecycle events, reference
//! spaces, swapchains of Vulkan images on the application's device, views from a scripted head,
//! frame pacing at a display rate) and hands the submitted eye images back to the test (see
//! [`control`]). `INCLUBIT_XR_SIM` picks the machine it pretends to be: `hmd` (a headset with
//! Vulkan, the default), `no-hmd` (a runtime with no headset plugged in), `no-vulkan` (a runtime
//! without XR_KHR_vulkan_enable2), `busy` (a headset another application holds: no session).

#![allow(clippy::missing_safety_doc)]

mod control;
mod gpu;
mod math;
mod runtime;

use std::ffi::{c_char, CStr};
use std::sync::atomic::{AtomicU64, Ordering};

use openxr_sys as sys;
use openxr_sys::{pfn, Handle};

const RUNTIME_NAME: &str = "inclubit simulated runtime";
const SYSTEM_NAME: &str = "inclubit simulated headset";
const SYSTEM_ID: u64 = 1;
const VULKAN_ENABLE2: &str = "XR_KHR_vulkan_enable2";

static NEXT_INSTANCE: AtomicU64 = AtomicU64::new(1);

fn mode() -> String {
    std::env::var("INCLUBIT_XR_SIM").unwrap_or_else(|_| "hmd".into())
}

fn extensions() -> Vec<&'static str> {
    if mode() == "no-vulkan" {
        Vec::new()
    } else {
        vec![VULKAN_ENABLE2]
    }
}

fn copy_str<const N: usize>(dst: &mut [c_char; N], s: &str) {
    let n = s.len().min(N - 1);
    for (d, b) in dst.iter_mut().zip(s.as_bytes()[..n].iter()) {
        *d = *b as c_char;
    }
    dst[n] = 0;
}

/// The loader's entry point into a runtime.
#[no_mangle]
pub unsafe extern "system" fn xrNegotiateLoaderRuntimeInterface(
    info: *const sys::NegotiateLoaderInfo,
    request: *mut sys::NegotiateRuntimeRequest,
) -> sys::Result {
    if info.is_null() || request.is_null() {
        return sys::Result::ERROR_INITIALIZATION_FAILED;
    }
    let info = &*info;
    if info.min_interface_version > 1 || info.max_interface_version < 1 {
        return sys::Result::ERROR_INITIALIZATION_FAILED;
    }
    let request = &mut *request;
    request.runtime_interface_version = 1;
    request.runtime_api_version = sys::Version::new(1, 0, 0);
    request.get_instance_proc_addr = Some(get_instance_proc_addr);
    sys::Result::SUCCESS
}

unsafe extern "system" fn get_instance_proc_addr(
    _instance: sys::Instance,
    name: *const c_char,
    function: *mut Option<pfn::VoidFunction>,
) -> sys::Result {
    if name.is_null() || function.is_null() {
        return sys::Result::ERROR_VALIDATION_FAILURE;
    }
    // The signature is checked against openxr-sys's pointer type before it is erased.
    macro_rules! f {
        ($ty:ident, $f:path) => {{
            let typed: pfn::$ty = $f;
            Some(std::mem::transmute::<pfn::$ty, pfn::VoidFunction>(typed))
        }};
    }
    let enable2 = !extensions().is_empty();
    let f: Option<pfn::VoidFunction> = match CStr::from_ptr(name).to_bytes() {
        b"xrGetInstanceProcAddr" => f!(GetInstanceProcAddr, get_instance_proc_addr),
        b"xrEnumerateInstanceExtensionProperties" => {
            f!(EnumerateInstanceExtensionProperties, enumerate_extensions)
        }
        b"xrEnumerateApiLayerProperties" => f!(EnumerateApiLayerProperties, enumerate_layers),
        b"xrCreateInstance" => f!(CreateInstance, create_instance),
        b"xrDestroyInstance" => f!(DestroyInstance, destroy_instance),
        b"xrGetInstanceProperties" => f!(GetInstanceProperties, instance_properties),
        b"xrGetSystem" => f!(GetSystem, get_system),
        b"xrGetSystemProperties" => f!(GetSystemProperties, system_properties),
        b"xrGetVulkanGraphicsRequirements2KHR" if enable2 => {
            f!(GetVulkanGraphicsRequirements2KHR, vulkan_requirements)
        }
        b"xrCreateVulkanInstanceKHR" if enable2 => f!(CreateVulkanInstanceKHR, vulkan_instance),
        b"xrGetVulkanGraphicsDevice2KHR" if enable2 => {
            f!(GetVulkanGraphicsDevice2KHR, vulkan_physical_device)
        }
        b"xrCreateVulkanDeviceKHR" if enable2 => f!(CreateVulkanDeviceKHR, vulkan_device),
        b"xrCreateSession" => f!(CreateSession, runtime::create_session),
        b"xrDestroySession" => f!(DestroySession, runtime::destroy_session),
        b"xrBeginSession" => f!(BeginSession, runtime::begin_session),
        b"xrEndSession" => f!(EndSession, runtime::end_session),
        b"xrRequestExitSession" => f!(RequestExitSession, runtime::request_exit_session),
        b"xrPollEvent" => f!(PollEvent, runtime::poll_event),
        b"xrEnumerateViewConfigurations" => {
            f!(
                EnumerateViewConfigurations,
                runtime::enumerate_view_configurations
            )
        }
        b"xrGetViewConfigurationProperties" => f!(
            GetViewConfigurationProperties,
            runtime::view_configuration_properties
        ),
        b"xrEnumerateViewConfigurationViews" => f!(
            EnumerateViewConfigurationViews,
            runtime::enumerate_view_configuration_views
        ),
        b"xrEnumerateEnvironmentBlendModes" => {
            f!(
                EnumerateEnvironmentBlendModes,
                runtime::enumerate_blend_modes
            )
        }
        b"xrEnumerateReferenceSpaces" => {
            f!(
                EnumerateReferenceSpaces,
                runtime::enumerate_reference_spaces
            )
        }
        b"xrCreateReferenceSpace" => f!(CreateReferenceSpace, runtime::create_reference_space),
        b"xrDestroySpace" => f!(DestroySpace, runtime::destroy_space),
        b"xrLocateSpace" => f!(LocateSpace, runtime::locate_space),
        b"xrLocateViews" => f!(LocateViews, runtime::locate_views),
        b"xrEnumerateSwapchainFormats" => {
            f!(
                EnumerateSwapchainFormats,
                runtime::enumerate_swapchain_formats
            )
        }
        b"xrCreateSwapchain" => f!(CreateSwapchain, runtime::create_swapchain),
        b"xrDestroySwapchain" => f!(DestroySwapchain, runtime::destroy_swapchain),
        b"xrEnumerateSwapchainImages" => {
            f!(
                EnumerateSwapchainImages,
                runtime::enumerate_swapchain_images
            )
        }
        b"xrAcquireSwapchainImage" => f!(AcquireSwapchainImage, runtime::acquire_swapchain_image),
        b"xrWaitSwapchainImage" => f!(WaitSwapchainImage, runtime::wait_swapchain_image),
        b"xrReleaseSwapchainImage" => f!(ReleaseSwapchainImage, runtime::release_swapchain_image),
        b"xrWaitFrame" => f!(WaitFrame, runtime::wait_frame),
        b"xrBeginFrame" => f!(BeginFrame, runtime::begin_frame),
        b"xrEndFrame" => f!(EndFrame, runtime::end_frame),
        // Everything else exists (bindings resolve every core function up front) and answers
        // that it is not supported here yet.
        n if n.starts_with(b"xr") => Some(std::mem::transmute::<
            unsafe extern "system" fn() -> sys::Result,
            pfn::VoidFunction,
        >(unsupported)),
        _ => None,
    };
    *function = f;
    if f.is_some() {
        sys::Result::SUCCESS
    } else {
        sys::Result::ERROR_FUNCTION_UNSUPPORTED
    }
}

unsafe extern "system" fn unsupported() -> sys::Result {
    sys::Result::ERROR_FUNCTION_UNSUPPORTED
}

unsafe extern "system" fn enumerate_extensions(
    layer: *const c_char,
    capacity: u32,
    count: *mut u32,
    props: *mut sys::ExtensionProperties,
) -> sys::Result {
    if !layer.is_null() {
        return sys::Result::ERROR_API_LAYER_NOT_PRESENT;
    }
    let exts = extensions();
    *count = exts.len() as u32;
    if capacity == 0 {
        return sys::Result::SUCCESS;
    }
    if (capacity as usize) < exts.len() {
        return sys::Result::ERROR_SIZE_INSUFFICIENT;
    }
    for (i, e) in exts.iter().enumerate() {
        let p = &mut *props.add(i);
        copy_str(&mut p.extension_name, e);
        p.extension_version = 2;
    }
    sys::Result::SUCCESS
}

unsafe extern "system" fn enumerate_layers(
    _capacity: u32,
    count: *mut u32,
    _props: *mut sys::ApiLayerProperties,
) -> sys::Result {
    *count = 0;
    sys::Result::SUCCESS
}

unsafe extern "system" fn create_instance(
    info: *const sys::InstanceCreateInfo,
    instance: *mut sys::Instance,
) -> sys::Result {
    if info.is_null() || instance.is_null() {
        return sys::Result::ERROR_VALIDATION_FAILURE;
    }
    let info = &*info;
    let supported = extensions();
    for i in 0..info.enabled_extension_count as usize {
        let name = CStr::from_ptr(*info.enabled_extension_names.add(i));
        if !supported.iter().any(|s| s.as_bytes() == name.to_bytes()) {
            return sys::Result::ERROR_EXTENSION_NOT_PRESENT;
        }
    }
    *instance = sys::Instance::from_raw(NEXT_INSTANCE.fetch_add(1, Ordering::Relaxed));
    sys::Result::SUCCESS
}

unsafe extern "system" fn destroy_instance(_instance: sys::Instance) -> sys::Result {
    sys::Result::SUCCESS
}

unsafe extern "system" fn instance_properties(
    _instance: sys::Instance,
    props: *mut sys::InstanceProperties,
) -> sys::Result {
    let p = &mut *props;
    p.runtime_version = sys::Version::new(0, 1, 0);
    copy_str(&mut p.runtime_name, RUNTIME_NAME);
    sys::Result::SUCCESS
}

unsafe extern "system" fn get_system(
    _instance: sys::Instance,
    info: *const sys::SystemGetInfo,
    system: *mut sys::SystemId,
) -> sys::Result {
    if (*info).form_factor != sys::FormFactor::HEAD_MOUNTED_DISPLAY {
        return sys::Result::ERROR_FORM_FACTOR_UNSUPPORTED;
    }
    if mode() == "no-hmd" || control::unplugged() {
        return sys::Result::ERROR_FORM_FACTOR_UNAVAILABLE;
    }
    *system = sys::SystemId::from_raw(SYSTEM_ID);
    sys::Result::SUCCESS
}

unsafe extern "system" fn system_properties(
    _instance: sys::Instance,
    system: sys::SystemId,
    props: *mut sys::SystemProperties,
) -> sys::Result {
    if system.into_raw() != SYSTEM_ID {
        return sys::Result::ERROR_SYSTEM_INVALID;
    }
    let p = &mut *props;
    p.system_id = system;
    p.vendor_id = 0;
    copy_str(&mut p.system_name, SYSTEM_NAME);
    p.graphics_properties = sys::SystemGraphicsProperties {
        max_swapchain_image_height: 4096,
        max_swapchain_image_width: 4096,
        max_layer_count: 16,
    };
    p.tracking_properties = sys::SystemTrackingProperties {
        orientation_tracking: sys::TRUE,
        position_tracking: sys::TRUE,
    };
    sys::Result::SUCCESS
}

fn system_ok(system: sys::SystemId) -> Result<(), sys::Result> {
    if system.into_raw() == SYSTEM_ID && mode() != "no-hmd" {
        Ok(())
    } else {
        Err(sys::Result::ERROR_SYSTEM_INVALID)
    }
}

unsafe extern "system" fn vulkan_requirements(
    _instance: sys::Instance,
    system: sys::SystemId,
    reqs: *mut sys::GraphicsRequirementsVulkanKHR,
) -> sys::Result {
    if let Err(e) = system_ok(system) {
        return e;
    }
    (*reqs).min_api_version_supported = sys::Version::new(1, 0, 0);
    (*reqs).max_api_version_supported = sys::Version::new(1, 3, 0);
    sys::Result::SUCCESS
}

/// The application's `vkGetInstanceProcAddr`, typed for ash.
unsafe fn app_gipa(f: Option<sys::platform::VkGetInstanceProcAddr>) -> Option<gpu::Gipa> {
    f.map(|f| std::mem::transmute::<sys::platform::VkGetInstanceProcAddr, gpu::Gipa>(f))
}

unsafe extern "system" fn vulkan_instance(
    _instance: sys::Instance,
    info: *const sys::VulkanInstanceCreateInfoKHR,
    out: *mut sys::platform::VkInstance,
    vk_result: *mut sys::platform::VkResult,
) -> sys::Result {
    let info = &*info;
    if let Err(e) = system_ok(info.system_id) {
        return e;
    }
    let Some(gipa) = app_gipa(info.pfn_get_instance_proc_addr) else {
        return sys::Result::ERROR_VALIDATION_FAILURE;
    };
    let create = &*(info.vulkan_create_info as *const ash::vk::InstanceCreateInfo);
    match gpu::Vk::create_instance(gpu::entry(gipa), create) {
        Ok(vk) => {
            *out = ash::vk::Handle::as_raw(vk.instance.handle()) as usize as _;
            *vk_result = 0;
            runtime::sim().vk = Some(vk);
        }
        Err(e) => *vk_result = e.as_raw(),
    }
    sys::Result::SUCCESS
}

unsafe extern "system" fn vulkan_physical_device(
    _instance: sys::Instance,
    info: *const sys::VulkanGraphicsDeviceGetInfoKHR,
    out: *mut sys::platform::VkPhysicalDevice,
) -> sys::Result {
    if let Err(e) = system_ok((*info).system_id) {
        return e;
    }
    let sim = runtime::sim();
    match &sim.vk {
        Some(vk)
            if ash::vk::Handle::as_raw(vk.instance.handle()) == (*info).vulkan_instance as u64 =>
        {
            *out = ash::vk::Handle::as_raw(vk.physical) as usize as _;
            sys::Result::SUCCESS
        }
        _ => sys::Result::ERROR_GRAPHICS_DEVICE_INVALID,
    }
}

unsafe extern "system" fn vulkan_device(
    _instance: sys::Instance,
    info: *const sys::VulkanDeviceCreateInfoKHR,
    out: *mut sys::platform::VkDevice,
    vk_result: *mut sys::platform::VkResult,
) -> sys::Result {
    let info = &*info;
    if let Err(e) = system_ok(info.system_id) {
        return e;
    }
    let mut sim = runtime::sim();
    let Some(vk) = sim.vk.as_mut() else {
        return sys::Result::ERROR_GRAPHICS_REQUIREMENTS_CALL_MISSING;
    };
    let physical =
        <ash::vk::PhysicalDevice as ash::vk::Handle>::from_raw(info.vulkan_physical_device as u64);
    let create = &*(info.vulkan_create_info as *const ash::vk::DeviceCreateInfo);
    match vk.create_device(physical, create) {
        Ok(d) => {
            *out = ash::vk::Handle::as_raw(d) as usize as _;
            *vk_result = 0;
        }
        Err(e) => *vk_result = e.as_raw(),
    }
    sys::Result::SUCCESS
}
