//! The runtime's Vulkan side: it creates the application's VkInstance and VkDevice (through the
//! application's own `vkGetInstanceProcAddr`, as XR_KHR_vulkan_enable2 asks), owns the
//! swapchain images on that device, and copies submitted images back to the host.

use ash::vk::{self, Handle};

pub struct Vk {
    pub instance: ash::Instance,
    pub device: Option<ash::Device>,
    pub physical: vk::PhysicalDevice,
}

pub type Gipa = vk::PFN_vkGetInstanceProcAddr;

/// The application's `vkGetInstanceProcAddr` as ash's loader.
pub unsafe fn entry(gipa: Gipa) -> ash::Entry {
    ash::Entry::from_static_fn(ash::StaticFn {
        get_instance_proc_addr: gipa,
    })
}

impl Vk {
    pub unsafe fn create_instance(
        entry: ash::Entry,
        info: &vk::InstanceCreateInfo<'_>,
    ) -> Result<Self, vk::Result> {
        let instance = entry.create_instance(info, None)?;
        let physical = instance
            .enumerate_physical_devices()?
            .first()
            .copied()
            .ok_or(vk::Result::ERROR_INITIALIZATION_FAILED)?;
        Ok(Self {
            instance,
            device: None,
            physical,
        })
    }

    pub unsafe fn create_device(
        &mut self,
        physical: vk::PhysicalDevice,
        info: &vk::DeviceCreateInfo<'_>,
    ) -> Result<vk::Device, vk::Result> {
        let device = self.instance.create_device(physical, info, None)?;
        let handle = device.handle();
        self.device = Some(device);
        Ok(handle)
    }

    /// The device the session was created with (loaded here if the runtime did not make it).
    pub unsafe fn device_for(&mut self, raw: vk::Device) -> ash::Device {
        match &self.device {
            Some(d) if d.handle() == raw => d.clone(),
            _ => {
                let d = ash::Device::load(self.instance.fp_v1_0(), raw);
                self.device = Some(d.clone());
                d
            }
        }
    }
}

/// A session's queue and command pool, for copies.
pub struct Queue {
    pub device: ash::Device,
    queue: vk::Queue,
    pool: vk::CommandPool,
    cmd: vk::CommandBuffer,
    fence: vk::Fence,
    memory: vk::PhysicalDeviceMemoryProperties,
}

impl Queue {
    pub unsafe fn new(
        vk: &Vk,
        device: ash::Device,
        family: u32,
        index: u32,
    ) -> Result<Self, vk::Result> {
        let queue = device.get_device_queue(family, index);
        let pool = device.create_command_pool(
            &vk::CommandPoolCreateInfo::default()
                .queue_family_index(family)
                .flags(vk::CommandPoolCreateFlags::RESET_COMMAND_BUFFER),
            None,
        )?;
        let cmd = device.allocate_command_buffers(
            &vk::CommandBufferAllocateInfo::default()
                .command_pool(pool)
                .command_buffer_count(1),
        )?[0];
        let fence = device.create_fence(&vk::FenceCreateInfo::default(), None)?;
        let memory = vk
            .instance
            .get_physical_device_memory_properties(vk.physical);
        Ok(Self {
            device,
            queue,
            pool,
            cmd,
            fence,
            memory,
        })
    }

    fn memory_type(&self, bits: u32, flags: vk::MemoryPropertyFlags) -> Option<u32> {
        (0..self.memory.memory_type_count).find(|&i| {
            bits & (1 << i) != 0
                && self.memory.memory_types[i as usize]
                    .property_flags
                    .contains(flags)
        })
    }

    unsafe fn allocate(
        &self,
        req: vk::MemoryRequirements,
        flags: vk::MemoryPropertyFlags,
    ) -> Result<vk::DeviceMemory, vk::Result> {
        let ty = self
            .memory_type(req.memory_type_bits, flags)
            .or_else(|| self.memory_type(req.memory_type_bits, vk::MemoryPropertyFlags::empty()))
            .ok_or(vk::Result::ERROR_OUT_OF_DEVICE_MEMORY)?;
        self.device.allocate_memory(
            &vk::MemoryAllocateInfo::default()
                .allocation_size(req.size)
                .memory_type_index(ty),
            None,
        )
    }

    pub unsafe fn destroy(&self) {
        let _ = self.device.device_wait_idle();
        self.device.destroy_fence(self.fence, None);
        self.device.destroy_command_pool(self.pool, None);
    }
}

/// One swapchain's images and its read-back buffer.
pub struct Images {
    pub images: Vec<vk::Image>,
    memory: Vec<vk::DeviceMemory>,
    pub format: vk::Format,
    readback: vk::Buffer,
    readback_memory: vk::DeviceMemory,
}

impl Images {
    pub unsafe fn new(
        q: &Queue,
        format: vk::Format,
        size: (u32, u32),
        layers: u32,
        usage: vk::ImageUsageFlags,
        flags: vk::ImageCreateFlags,
        count: usize,
    ) -> Result<Self, vk::Result> {
        let d = &q.device;
        let mut images = Vec::new();
        let mut memory = Vec::new();
        for _ in 0..count {
            let image = d.create_image(
                &vk::ImageCreateInfo::default()
                    .flags(flags)
                    .image_type(vk::ImageType::TYPE_2D)
                    .format(format)
                    .extent(vk::Extent3D {
                        width: size.0,
                        height: size.1,
                        depth: 1,
                    })
                    .mip_levels(1)
                    .array_layers(layers)
                    .samples(vk::SampleCountFlags::TYPE_1)
                    .tiling(vk::ImageTiling::OPTIMAL)
                    .usage(usage | vk::ImageUsageFlags::TRANSFER_SRC)
                    .initial_layout(vk::ImageLayout::UNDEFINED),
                None,
            )?;
            let mem = q.allocate(
                d.get_image_memory_requirements(image),
                vk::MemoryPropertyFlags::DEVICE_LOCAL,
            )?;
            d.bind_image_memory(image, mem, 0)?;
            images.push(image);
            memory.push(mem);
        }
        let readback = d.create_buffer(
            &vk::BufferCreateInfo::default()
                .size(size.0 as u64 * size.1 as u64 * 4)
                .usage(vk::BufferUsageFlags::TRANSFER_DST),
            None,
        )?;
        let readback_memory = q.allocate(
            d.get_buffer_memory_requirements(readback),
            vk::MemoryPropertyFlags::HOST_VISIBLE | vk::MemoryPropertyFlags::HOST_COHERENT,
        )?;
        d.bind_buffer_memory(readback, readback_memory, 0)?;
        Ok(Self {
            images,
            memory,
            format,
            readback,
            readback_memory,
        })
    }

    pub unsafe fn destroy(&self, q: &Queue) {
        let d = &q.device;
        let _ = d.device_wait_idle();
        for (i, m) in self.images.iter().zip(&self.memory) {
            d.destroy_image(*i, None);
            d.free_memory(*m, None);
        }
        d.destroy_buffer(self.readback, None);
        d.free_memory(self.readback_memory, None);
    }

    /// Copies a submitted rectangle of image `index` (left in COLOR_ATTACHMENT_OPTIMAL by the
    /// application, as OpenXR requires) back to the host as RGBA.
    pub unsafe fn read(
        &self,
        q: &Queue,
        index: usize,
        layer: u32,
        rect: vk::Rect2D,
    ) -> Result<Vec<u8>, vk::Result> {
        let d = &q.device;
        let image = self.images[index];
        let range = vk::ImageSubresourceRange::default()
            .aspect_mask(vk::ImageAspectFlags::COLOR)
            .base_array_layer(layer)
            .layer_count(1)
            .level_count(1);
        let barrier = |from, to, src, dst| {
            vk::ImageMemoryBarrier::default()
                .image(image)
                .old_layout(from)
                .new_layout(to)
                .src_access_mask(src)
                .dst_access_mask(dst)
                .subresource_range(range)
        };
        let cmd = q.cmd;
        d.reset_command_buffer(cmd, vk::CommandBufferResetFlags::empty())?;
        d.begin_command_buffer(
            cmd,
            &vk::CommandBufferBeginInfo::default()
                .flags(vk::CommandBufferUsageFlags::ONE_TIME_SUBMIT),
        )?;
        d.cmd_pipeline_barrier(
            cmd,
            vk::PipelineStageFlags::COLOR_ATTACHMENT_OUTPUT,
            vk::PipelineStageFlags::TRANSFER,
            vk::DependencyFlags::empty(),
            &[],
            &[],
            &[barrier(
                vk::ImageLayout::COLOR_ATTACHMENT_OPTIMAL,
                vk::ImageLayout::TRANSFER_SRC_OPTIMAL,
                vk::AccessFlags::COLOR_ATTACHMENT_WRITE,
                vk::AccessFlags::TRANSFER_READ,
            )],
        );
        d.cmd_copy_image_to_buffer(
            cmd,
            image,
            vk::ImageLayout::TRANSFER_SRC_OPTIMAL,
            self.readback,
            &[vk::BufferImageCopy::default()
                .image_subresource(
                    vk::ImageSubresourceLayers::default()
                        .aspect_mask(vk::ImageAspectFlags::COLOR)
                        .base_array_layer(layer)
                        .layer_count(1),
                )
                .image_offset(vk::Offset3D {
                    x: rect.offset.x,
                    y: rect.offset.y,
                    z: 0,
                })
                .image_extent(vk::Extent3D {
                    width: rect.extent.width,
                    height: rect.extent.height,
                    depth: 1,
                })],
        );
        d.cmd_pipeline_barrier(
            cmd,
            vk::PipelineStageFlags::TRANSFER,
            vk::PipelineStageFlags::COLOR_ATTACHMENT_OUTPUT | vk::PipelineStageFlags::HOST,
            vk::DependencyFlags::empty(),
            &[vk::MemoryBarrier::default()
                .src_access_mask(vk::AccessFlags::TRANSFER_WRITE)
                .dst_access_mask(vk::AccessFlags::HOST_READ)],
            &[],
            &[barrier(
                vk::ImageLayout::TRANSFER_SRC_OPTIMAL,
                vk::ImageLayout::COLOR_ATTACHMENT_OPTIMAL,
                vk::AccessFlags::TRANSFER_READ,
                vk::AccessFlags::COLOR_ATTACHMENT_WRITE,
            )],
        );
        d.end_command_buffer(cmd)?;
        let cmds = [cmd];
        d.queue_submit(
            q.queue,
            &[vk::SubmitInfo::default().command_buffers(&cmds)],
            q.fence,
        )?;
        d.wait_for_fences(&[q.fence], true, 10_000_000_000)?;
        d.reset_fences(&[q.fence])?;
        let n = rect.extent.width as usize * rect.extent.height as usize * 4;
        let ptr = d.map_memory(
            self.readback_memory,
            0,
            n as u64,
            vk::MemoryMapFlags::empty(),
        )? as *const u8;
        let mut out = std::slice::from_raw_parts(ptr, n).to_vec();
        d.unmap_memory(self.readback_memory);
        if matches!(
            self.format,
            vk::Format::B8G8R8A8_SRGB | vk::Format::B8G8R8A8_UNORM
        ) {
            for px in out.chunks_exact_mut(4) {
                px.swap(0, 2);
            }
        }
        Ok(out)
    }
}

pub fn raw_handle<T: Handle>(h: T) -> u64 {
    h.as_raw()
}
