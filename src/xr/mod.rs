//! OpenXR: is there a runtime, with a headset, that renders with Vulkan? Asked through the real
//! loader (`libopenxr_loader.so.1`, loaded at run time, so a machine without it still runs),
//! and the headset session that renders to it.

pub mod lifecycle;
pub mod pose;
pub mod session;
mod vulkan;

use openxr as xr;

/// A runtime with a headset, ready for a Vulkan session.
#[derive(Debug, Clone)]
pub struct Runtime {
    pub runtime: String,
    pub system: String,
}

/// Why there is no headset to render to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XrUnavailable {
    /// No loader library, or the loader finds no active runtime.
    #[error("no OpenXR runtime found")]
    NoRuntime,
    #[error("the OpenXR runtime {0} sees no headset")]
    NoHeadset(String),
    #[error("the OpenXR runtime {0} cannot render with Vulkan (no XR_KHR_vulkan_enable2)")]
    NoVulkan(String),
    #[error("OpenXR: {0}")]
    Other(String),
}

/// Silences the loader's own stderr diagnostics unless the user asked for them. Call it before
/// any other thread starts: the environment is not safe to change while threads read it.
pub fn quiet_loader() {
    if std::env::var_os("XR_LOADER_DEBUG").is_none() {
        std::env::set_var("XR_LOADER_DEBUG", "none");
    }
    // Mesa's Vulkan drivers probe for Wayland at every instance and print "XDG_RUNTIME_DIR is
    // invalid or not set" each time where it is unset (a service, ssh, CI): give them a
    // private one, as a login session would.
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        let dir = std::env::temp_dir().join(format!("inclubit-runtime-{}", unsafe_uid()));
        let made = std::fs::create_dir_all(&dir).and_then(|_| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        });
        if made.is_ok() {
            std::env::set_var("XDG_RUNTIME_DIR", dir);
        }
    }
}

fn unsafe_uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

/// Looks for a runtime and a head-mounted display.
pub fn probe() -> Result<Runtime, XrUnavailable> {
    // SAFETY: loads the system's OpenXR loader, a library made to be loaded this way.
    let entry = unsafe { xr::Entry::load(&()) }.map_err(|e| {
        tracing::debug!("OpenXR loader: {e}");
        XrUnavailable::NoRuntime
    })?;
    let (_, _, runtime, system) = open(&entry)?;
    Ok(Runtime { runtime, system })
}

/// An instance with XR_KHR_vulkan_enable2 and its head-mounted system, with their names.
fn open(entry: &xr::Entry) -> Result<(xr::Instance, xr::SystemId, String, String), XrUnavailable> {
    let available = entry.enumerate_extensions().map_err(|e| match e {
        xr::sys::Result::ERROR_RUNTIME_UNAVAILABLE | xr::sys::Result::ERROR_RUNTIME_FAILURE => {
            XrUnavailable::NoRuntime
        }
        e => XrUnavailable::Other(e.to_string()),
    })?;
    let mut wanted = xr::ExtensionSet::default();
    wanted.khr_vulkan_enable2 = available.khr_vulkan_enable2;
    let app = xr::ApplicationInfo {
        application_name: "inclubit",
        application_version: 1,
        engine_name: "inclubit",
        engine_version: 1,
        // 1.0: what every runtime and Debian's loader (1.0.20) speak.
        api_version: xr::Version::new(1, 0, 0),
    };
    let instance = entry
        .create_instance(&app, &wanted, &[], &())
        .map_err(|e| match e {
            xr::sys::Result::ERROR_RUNTIME_UNAVAILABLE
            | xr::sys::Result::ERROR_RUNTIME_FAILURE
            | xr::sys::Result::ERROR_INSTANCE_LOST => XrUnavailable::NoRuntime,
            e => XrUnavailable::Other(e.to_string()),
        })?;
    let runtime = instance
        .properties()
        .map(|p| format!("{} {}", p.runtime_name, p.runtime_version))
        .unwrap_or_else(|_| "(unnamed)".into());
    if !available.khr_vulkan_enable2 {
        return Err(XrUnavailable::NoVulkan(runtime));
    }
    let system = instance
        .system(xr::FormFactor::HEAD_MOUNTED_DISPLAY)
        .map_err(|e| match e {
            xr::sys::Result::ERROR_FORM_FACTOR_UNAVAILABLE
            | xr::sys::Result::ERROR_FORM_FACTOR_UNSUPPORTED => {
                XrUnavailable::NoHeadset(runtime.clone())
            }
            e => XrUnavailable::Other(e.to_string()),
        })?;
    let name = instance
        .system_properties(system)
        .map(|p| p.system_name)
        .unwrap_or_default();
    Ok((instance, system, runtime, name))
}
