//! inclubit: live 360° video from a camera PC to VR headsets and browsers, peer to peer.

pub mod audio;
pub mod capture;
pub mod decode;
pub mod encode;
pub mod picture;
pub mod projection;

pub use inclubit_rendezvous as rendezvous;
pub use inclubit_rendezvous::clock;
/// The peer transport lives in the rendezvous crate so the browser bridge can use it too.
pub use inclubit_rendezvous::peer as net;

/// Initialises FFmpeg once (devices included) and quiets its logging.
pub fn media_init() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = ffmpeg_next::init();
        ffmpeg_next::device::register_all();
        ffmpeg_next::util::log::set_level(ffmpeg_next::util::log::Level::Fatal);
    });
}
pub mod cli;
pub mod commands;
pub mod pipeline;
pub mod render;
pub mod xr;
