//! wgpu on the runtime's Vulkan device (XR_KHR_vulkan_enable2): the runtime creates the
//! VkInstance and VkDevice from wgpu's requirements, and wgpu wraps them. The handles belong to
//! the XR side, so wgpu gets drop callbacks that leave them alone.

use std::ffi::c_char;

use ash::vk::{self, Handle};
use openxr as xr;
use wgpu::hal::{self, api::Vulkan};

use super::session::XrError;
use crate::render::Gpu;

/// The least Vulkan version asked for: what lavapipe and every desktop driver has.
const VK_VERSION: u32 = vk::API_VERSION_1_2;

fn vk_err(what: &str) -> impl Fn(vk::Result) -> XrError + '_ {
    move |e| XrError::Vulkan(format!("{what}: {e}"))
}

/// A wgpu device on the headset's GPU, and what xrCreateSession needs to know of it.
pub fn create(
    instance: &xr::Instance,
    system: xr::SystemId,
) -> Result<(Gpu, xr::vulkan::SessionCreateInfo), XrError> {
    let reqs = instance
        .graphics_requirements::<xr::Vulkan>(system)
        .map_err(XrError::from_xr)?;
    let wanted = xr::Version::new(1, 2, 0);
    if reqs.min_api_version_supported > wanted || reqs.max_api_version_supported.major() < 1 {
        return Err(XrError::Vulkan(format!(
            "the runtime needs Vulkan {} to {}; inclubit uses 1.2",
            reqs.min_api_version_supported, reqs.max_api_version_supported
        )));
    }
    // SAFETY: loads the system's Vulkan loader, made to be loaded this way.
    let entry = unsafe { ash::Entry::load() }
        .map_err(|e| XrError::Vulkan(format!("no Vulkan loader: {e}")))?;
    // wgpu picks the SPIR-V version from the *device's* Vulkan version (1.6 on a 1.3 device);
    // an instance of a lower version makes that SPIR-V invalid (validation: InconsistentSpirv).
    // Ask for 1.3 when the runtime and the loader allow it.
    // SAFETY: a plain query of the loader.
    let loader = unsafe { entry.try_enumerate_instance_version() }
        .ok()
        .flatten()
        .unwrap_or(vk::API_VERSION_1_0);
    let vk_version = if reqs.max_api_version_supported >= xr::Version::new(1, 3, 0)
        && loader >= vk::API_VERSION_1_3
    {
        vk::API_VERSION_1_3
    } else {
        VK_VERSION
    };
    let flags = wgpu::InstanceFlags::empty().with_env();
    let extensions = hal::vulkan::Instance::desired_extensions(&entry, vk_version, flags)
        .map_err(|e| XrError::Vulkan(e.to_string()))?;
    let ext_ptrs: Vec<*const c_char> = extensions.iter().map(|e| e.as_ptr()).collect();
    let app = vk::ApplicationInfo::default()
        .application_name(c"inclubit")
        .application_version(1)
        .engine_name(c"inclubit")
        .engine_version(1)
        .api_version(vk_version);
    let create = vk::InstanceCreateInfo::default()
        .application_info(&app)
        .enabled_extension_names(&ext_ptrs);
    // SAFETY: the same function pointer type, spelt by ash and by openxr-sys.
    let gipa = unsafe {
        std::mem::transmute::<vk::PFN_vkGetInstanceProcAddr, xr::sys::platform::VkGetInstanceProcAddr>(
            entry.static_fn().get_instance_proc_addr,
        )
    };
    // SAFETY: the create info and the loader's vkGetInstanceProcAddr outlive the call.
    let raw_instance =
        unsafe { instance.create_vulkan_instance(system, gipa, &create as *const _ as *const _) }
            .map_err(XrError::from_xr)?
            .map_err(|r| vk_err("creating the Vulkan instance")(vk::Result::from_raw(r)))?;
    let vk_instance = vk::Instance::from_raw(raw_instance as u64);
    // SAFETY: a live instance made with this loader.
    let ash_instance = unsafe { ash::Instance::load(entry.static_fn(), vk_instance) };
    // SAFETY: the instance was created with `extensions` at VK_VERSION; the drop callback keeps
    // wgpu from destroying an instance it does not own.
    let hal_instance = unsafe {
        hal::vulkan::Instance::from_raw(
            entry.clone(),
            ash_instance.clone(),
            vk_version,
            0,
            None,
            extensions,
            flags,
            Default::default(),
            false,
            Some(Box::new(|| ())),
        )
    }
    .map_err(|e| XrError::Vulkan(e.to_string()))?;
    // SAFETY: the instance is the one the runtime made.
    let raw_physical = unsafe { instance.vulkan_graphics_device(system, raw_instance) }
        .map_err(XrError::from_xr)?;
    let physical = vk::PhysicalDevice::from_raw(raw_physical as u64);
    let exposed = hal_instance
        .expose_adapter(physical)
        .ok_or_else(|| XrError::Vulkan("the headset's GPU cannot run wgpu".into()))?;
    let features = crate::render::DEVICE_FEATURES;
    let device_extensions = exposed.adapter.required_device_extensions(features);
    let mut device_features = exposed
        .adapter
        .physical_device_features(&device_extensions, features);
    // SAFETY: a physical device of this instance.
    let family = unsafe { ash_instance.get_physical_device_queue_family_properties(physical) }
        .iter()
        .position(|f| f.queue_flags.contains(vk::QueueFlags::GRAPHICS))
        .ok_or_else(|| XrError::Vulkan("the headset's GPU has no graphics queue".into()))?
        as u32;
    let priorities = [1.0f32];
    let queues = [vk::DeviceQueueCreateInfo::default()
        .queue_family_index(family)
        .queue_priorities(&priorities)];
    let dev_ext_ptrs: Vec<*const c_char> = device_extensions.iter().map(|e| e.as_ptr()).collect();
    let device_create = device_features.add_to_device_create(
        vk::DeviceCreateInfo::default()
            .queue_create_infos(&queues)
            .enabled_extension_names(&dev_ext_ptrs),
    );
    // SAFETY: as for the instance.
    let raw_device = unsafe {
        instance.create_vulkan_device(
            system,
            gipa,
            raw_physical,
            &device_create as *const _ as *const _,
        )
    }
    .map_err(XrError::from_xr)?
    .map_err(|r| vk_err("creating the Vulkan device")(vk::Result::from_raw(r)))?;
    // SAFETY: a live device of this instance.
    let ash_device = unsafe {
        ash::Device::load(
            ash_instance.fp_v1_0(),
            vk::Device::from_raw(raw_device as u64),
        )
    };
    let limits = crate::render::device_limits(
        wgpu::Limits::downlevel_defaults().using_resolution(exposed.capabilities.limits.clone()),
    );
    // SAFETY: the device was created with these extensions and features, one queue in `family`.
    let open = unsafe {
        exposed.adapter.device_from_raw(
            ash_device,
            Some(Box::new(|| ())),
            &device_extensions,
            features,
            &limits,
            &wgpu::MemoryHints::Performance,
            family,
            0,
        )
    }
    .map_err(|e| XrError::Vulkan(e.to_string()))?;
    // SAFETY: all three come from the same hal instance.
    let wgpu_instance = unsafe { wgpu::Instance::from_hal::<Vulkan>(hal_instance) };
    let adapter = unsafe { wgpu_instance.create_adapter_from_hal(exposed) };
    let (device, queue) = unsafe {
        adapter.create_device_from_hal(
            open,
            &wgpu::DeviceDescriptor {
                label: Some("inclubit-xr"),
                required_features: features,
                required_limits: limits,
                ..Default::default()
            },
        )
    }
    .map_err(|e| XrError::Vulkan(e.to_string()))?;
    let info = xr::vulkan::SessionCreateInfo {
        instance: raw_instance,
        physical_device: raw_physical,
        device: raw_device,
        queue_family_index: family,
        queue_index: 0,
    };
    Ok((
        Gpu {
            instance: wgpu_instance,
            adapter,
            device,
            queue,
        },
        info,
    ))
}

/// A swapchain image (owned by the runtime) as a wgpu render target.
pub fn wrap_image(
    device: &wgpu::Device,
    image: u64,
    format: wgpu::TextureFormat,
    size: (u32, u32),
) -> Result<wgpu::Texture, XrError> {
    let extent = wgpu::Extent3d {
        width: size.0,
        height: size.1,
        depth_or_array_layers: 1,
    };
    // SAFETY: wgpu runs on Vulkan here (this device was made from a Vulkan hal device).
    let hal_device = unsafe { device.as_hal::<Vulkan>() }
        .ok_or_else(|| XrError::Vulkan("not a Vulkan device".into()))?;
    // SAFETY: the image is a live swapchain image of this device with this format and size;
    // the drop callback leaves its destruction to the runtime.
    let texture = unsafe {
        hal_device.texture_from_raw(
            vk::Image::from_raw(image),
            &hal::TextureDescriptor {
                label: Some("xr eye"),
                size: extent,
                mip_level_count: 1,
                sample_count: 1,
                dimension: wgpu::TextureDimension::D2,
                format,
                usage: wgpu::TextureUses::COLOR_TARGET,
                memory_flags: hal::MemoryFlags::empty(),
                view_formats: Vec::new(),
            },
            Some(Box::new(|| ())),
            hal::vulkan::TextureMemory::External,
        )
    };
    drop(hal_device);
    // SAFETY: made from this device, matching the descriptor; first use clears it.
    Ok(unsafe {
        device.create_texture_from_hal::<Vulkan>(
            texture,
            &wgpu::TextureDescriptor {
                label: Some("xr eye"),
                size: extent,
                mip_level_count: 1,
                sample_count: 1,
                dimension: wgpu::TextureDimension::D2,
                format,
                usage: wgpu::TextureUsages::RENDER_ATTACHMENT,
                view_formats: &[],
            },
            wgpu::TextureUses::UNINITIALIZED,
        )
    })
}
